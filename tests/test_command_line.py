"""Flags are spelled with underscores on every command line, and the hyphenated spelling is accepted."""
import pytest

import main
from benchmarks import litert_ops, litert_profile, pipeline, speed
from runtime.command_line import underscored_flags


@pytest.mark.parametrize('tokens, expected', [
    (['--data-format', 'NCHW'], ['--data_format', 'NCHW']),
    (['--skip-bad-images=1', '-h'], ['--skip_bad_images=1', '-h']),
    (['--load', 'a-b--c', '--', '--not-a-flag'], ['--load', 'a-b--c', '--', '--not-a-flag']),
    (['--image_size=my-size'], ['--image_size=my-size'])])
def test_long_flags_are_underscored_and_nothing_else(tokens, expected):
    assert underscored_flags(tokens) == expected


@pytest.mark.parametrize('hyphenated, underscored', [
    (['--data-format', 'NHWC', '--skip-bad-images'], ['--data_format', 'NHWC', '--skip_bad_images']),
    (['--width-ratio', '0.5', '--image-size', '96'], ['--width_ratio', '0.5', '--image_size', '96'])])
def test_main_takes_both_spellings(hyphenated, underscored):
    parser = main.get_parser()
    assert parser.parse_args(hyphenated) == parser.parse_args(underscored)


@pytest.mark.parametrize('parse_args', [speed.parse_args, litert_profile.parse_args, litert_ops.parse_args])
def test_benchmarks_take_both_spellings(parse_args):
    assert parse_args(['--batch-iters', '3', '--image-size', '64']) == \
        parse_args(['--batch_iters', '3', '--image_size', '64'])


def test_pipeline_bench_takes_both_spellings():
    assert pipeline.parse_args(['--image-size', '64']) == pipeline.parse_args(['--image_size', '64'])


@pytest.mark.parametrize('parse_args', [speed.parse_args, litert_profile.parse_args])
def test_benchmarks_threads(parse_args, capsys):
    assert parse_args(['--threads', '1']).threads == 1
    with pytest.raises(SystemExit):
        parse_args(['--threads', '0'])
    assert 'error: argument --threads: must be at least 1, not 0' in capsys.readouterr().err


@pytest.mark.parametrize('text, error', [('0,2', 'must be at least 1, not 0'), (',', 'names no thread count'),
                                         ('1,two', "invalid thread_counts value: '1,two'")])
def test_operator_profile_takes_several_thread_counts(text, error, capsys):
    assert litert_ops.parse_args(['--threads', '1,2']).threads == [1, 2]
    with pytest.raises(SystemExit):
        litert_ops.parse_args(['--threads', text])
    assert 'error: argument --threads: ' + error in capsys.readouterr().err
