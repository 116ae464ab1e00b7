"""Issue #14's items 1-17 and the tests that cover each (the map is checked: every named test
exists, and every item has at least one). Each listed test fails on the broken behaviour the item
describes (a planted crash, the old tolerance, the old parser, ...): see the test's docstring.

| item | what | tests |
|---|---|---|
| 1 | SIGFPE in latency candidates; a native crash must not kill the tool | test_native_crash (candidates keep every member, SIGFPE caught, CLI one line) |
| 2 | exit 1 on nested If, dynamic quantization, compute inside If | test_control_flow_models, test_dynamic_quant, test_rule_convinteger, test_cli_contrib_lstm |
| 3 | GroupNormalization with one group | test_groupnorm |
| 4 | oracle false alarms at high compression | test_oracle_tolerance |
| 5 | paddle2onnx -1 / 0 dims | test_input_sizes, test_paddle_patterns |
| 6 | symbolic spatial dims the model needs at one size | test_input_sizes |
| 7-13, 15-17 | CLI behaviour | test_cli_behaviour (one section per item), test_plot, test_cli_contrib_lstm (shapeless input) |
| 14 | start-up | test_cli_behaviour (no heavy import before parsing), test_cli_benchmark_scripts; benchmarks/startup.py measures it |
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

ITEMS: dict[int, list[str]] = {
    1: ["test_native_crash.py::test_candidates_keep_a_channel_in_every_member",
        "test_native_crash.py::test_latency_table_on_the_concat_fixture",
        "test_native_crash.py::test_onnxruntime_sigfpe_is_caught",
        "test_native_crash.py::test_signal_in_the_child_is_a_clean_error",
        "test_native_crash.py::test_cli_reports_a_crashing_model_in_one_line"],
    2: ["test_control_flow_models.py::test_normalize_keeps_nested_if_outputs_defined",
        "test_control_flow_models.py::test_branch_compute_is_counted_and_said_frozen",
        "test_control_flow_models.py::test_cli_does_not_pretend",
        "test_dynamic_quant.py::test_quantize_dynamic_model_prunes_and_verifies",
        "test_dynamic_quant.py::test_declared_output_types_survive_normalize",
        "test_dynamic_quant.py::test_matmulinteger_prunes_like_matmul",
        "test_rule_convinteger.py::test_convinteger_prunes_like_conv",
        "test_cli_contrib_lstm.py::test_the_lstm_alone_is_nothing_to_prune",
        "test_cli_contrib_lstm.py::test_the_head_prunes_and_verifies_behind_a_frozen_counted_lstm",
        "test_cli_contrib_lstm.py::test_shapeless_value_info_after_the_contrib_op_keeps_the_declared_outputs"],
    3: ["test_groupnorm.py::test_one_group_op_prunes_and_verifies",
        "test_groupnorm.py::test_one_group_lowered_prunes_and_verifies",
        "test_groupnorm.py::test_more_groups_freeze_with_a_reason"],
    4: ["test_oracle_tolerance.py::test_deep_stack_passes_at_every_ratio",
        "test_oracle_tolerance.py::test_a_live_channel_removed_is_caught"],
    5: ["test_input_sizes.py::test_minus_one_and_zero_dims_are_symbolic_before_normalization",
        "test_input_sizes.py::test_cli_prunes_a_model_with_minus_one_dims",
        "test_paddle_patterns.py::test_dims_declared_as_minus_one_are_symbolic"],
    6: ["test_input_sizes.py::test_a_height_fixed_by_a_reshape_constant_is_found",
        "test_input_sizes.py::test_no_size_that_runs_is_a_one_line_error_naming_the_dims"],
    7: ["test_cli_behaviour.py::test_unwritable_output_path_is_refused_before_any_work",
        "test_cli_behaviour.py::test_unwritable_side_output_leaves_no_model",
        "test_cli_behaviour.py::test_a_failing_side_output_takes_the_model_with_it"],
    8: ["test_cli_behaviour.py::test_analyze_json_is_written_when_stdout_is_closed_early"],
    9: ["test_cli_behaviour.py::test_typo_in_the_command_suggests_the_verb"],
    10: ["test_cli_behaviour.py::test_input_shape_accepts_comma_separated_and_repeated_forms",
         "test_cli_behaviour.py::test_argument_errors_come_before_the_model_is_read",
         "test_cli_contrib_lstm.py::test_an_input_without_a_shape_asks_for_input_shape"],
    11: ["test_cli_behaviour.py::test_peak_memory_takes_a_bare_number_of_bytes_and_is_named_as_the_flag",
         "test_cli_behaviour.py::test_one_quantity_is_written_in_one_unit"],
    12: ["test_cli_behaviour.py::test_no_cache_neither_reads_nor_stores_and_profile_has_no_no_latency"],
    13: ["test_cli_behaviour.py::test_heads_on_a_cnn_is_said_to_change_nothing",
         "test_cli_behaviour.py::test_calibration_that_nothing_reads_or_that_fits_no_input"],
    14: ["test_cli_behaviour.py::test_the_command_line_parses_without_onnx_onnxruntime_or_numpy",
         "test_cli_benchmark_scripts.py::test_help_imports_nothing_heavy"],
    15: ["test_cli_behaviour.py::test_progress_prints_plain_lines_when_not_a_terminal",
         "test_cli_behaviour.py::test_a_ratio_above_one_is_drawn_in_the_warning_colour"],
    16: ["test_cli_behaviour.py::test_report_records_versions_time_and_command_line"],
    17: ["test_cli_behaviour.py::test_ci_script_does_not_upgrade_pip_and_runs_the_readme_tests"],
}


def test_every_item_has_a_test():
    assert sorted(ITEMS) == list(range(1, 18)) and all(ITEMS.values())


@pytest.mark.parametrize("item", sorted(ITEMS))
def test_the_listed_tests_exist(item):
    for ref in ITEMS[item]:
        file, name = ref.split("::")
        tree = ast.parse((TESTS / file).read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in names, f"item {item}: {ref} is not a test"
