"""Validation a block at a time: the reader's blocks, the repeated-key check, and the promise that
the block path gives exactly what the line-by-line path gives."""

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from airflow_provider_training_hub.data import validate, validate_messages, workers
from airflow_provider_training_hub.data.reader import BOM, LineTooLong, iter_blocks


def _chat(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i}"}], **extra}


# Valid lines that stress the one-pass string count: escaped quotes, escaped backslashes right
# before a closing quote, \u escapes, the word "role" as a value, null and false optional fields,
# extra keys (one of them repeated, which is ignored like the key), reasoning, and a conversation
# that does not end with an assistant turn.
VALID = [
    json.dumps(_chat(0)),
    json.dumps({"messages": [{"role": "user", "content": 'Say "hi"'}, {"role": "assistant", "content": 'hi "there"'}]}),
    json.dumps({"messages": [{"role": "user", "content": "C:\\temp\\"}, {"role": "assistant", "content": "a\\\\b\n"}]}),
    json.dumps({"messages": [{"role": "user", "content": "café ✓"}, {"role": "assistant", "content": "role"}]}),
    json.dumps({"messages": [{"role": "user", "content": "q", "reasoning_content": None},
                             {"role": "assistant", "content": "a", "reasoning_content": "because"}], "unmask": False}),
    json.dumps(_chat(5, id=5, source={"role": "ignored", "content": "extra keys are ignored"})),
    json.dumps({"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]}),
    json.dumps({"messages": [{"role": "user", "content": "teach me"}], "unmask": True}),
    '{"messages":[{"role":"user","content":"compact"},{"role":"assistant","content":"ok"}]}',
    '{"messages": [{"role": "user", "content": "role"}, {"role": "assistant", "content": "x"}], "id": 1, "id": 2}',
]

# Lines that only the repeated-key check can refuse (each decodes into a valid sample), and
# other invalid lines; (text, location).
REPEATED = [
    ('{"messages": [{"role": "user", "content": "q", "role": "assistant"}]}', "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "q", "rol\\u0065": "assistant"}]}', "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "content": "b"}]}',
     "messages[1].content"),
    ('{"messages": [], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     "messages"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "unmask": true, "unmask": false}',
     "unmask"),
    ('{"id": 1, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",'
     ' "reasoning_content": "x", "reasoning_content": "y"}]}', "messages[1].reasoning_content"),
]
OTHER_INVALID = [
    ('{"messages": [{"role": "user", "content": "q"}]}', "messages"),  # nothing to learn from
    ('{"messages": [{"role": "bot", "content": "q"}]}', "messages[0].role"),
    (json.dumps(_chat(1)) + " " + json.dumps(_chat(2)), ""),  # two objects on one line
    ('{"messages": []}', "messages"),
]


def _mixed_file(path, copies: int = 1000) -> dict[int, tuple[str, bool]]:
    """Several blocks of valid lines with invalid ones spread among them;
    line -> (location, whether the reason is a repeated key)."""
    rng = random.Random(7)
    bad = REPEATED + OTHER_INVALID
    lines, expected, inserted = [], {}, 0
    for i in range(copies):
        lines += VALID
        if i % 37 == 3:
            lines.append("")  # a blank line
        if i % 23 == 5:
            text, _ = bad[inserted % len(bad)]
            lines.insert(rng.randrange(len(lines) - len(VALID), len(lines)), text)
            inserted += 1
    for number, line in enumerate(lines, 1):
        for text, location in bad:
            if line == text:
                expected[number] = (location, (text, location) in REPEATED)
    path.write_text("\n".join(lines) + "\n")
    return expected


def test_repeated_keys_are_found_among_valid_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    expected = _mixed_file(path)
    assert path.stat().st_size > 3 * 256 * 1024  # several blocks
    report = validate_messages(str(path), max_errors=1000)
    found = {e.line: (e.location, e.reason.startswith("duplicate key")) for e in report.errors}
    assert found == expected
    assert {location for location, repeated in expected.values() if repeated} == {loc for _, loc in REPEATED}
    assert report.stats["invalid_lines"] == len(expected)


def test_every_valid_line_passes_in_a_block(tmp_path):
    path = tmp_path / "valid.jsonl"
    path.write_text("\n".join(VALID * 50) + "\n")
    report = validate_messages(str(path))
    assert report.valid, report.summary()
    assert report.stats["samples"] == len(VALID) * 50
    assert report.stats["duplicate_samples"] == len(VALID) * 49
    assert report.stats["reasoning_samples"] == 50 and report.stats["unmask_samples"] == 50


def _report_and_files(path, out_dir, **options):
    """The report (less its paths), output and quarantine of validating ``path`` under ``skip``."""
    out_dir.mkdir()
    out = out_dir / "clean.jsonl"
    report = validate_messages(str(path), on_invalid="skip", output_path=str(out), max_errors=50, **options)
    data = report.to_dict()
    del data["output_path"], data["quarantine_path"]
    return data, out.read_bytes(), (out_dir / "clean.jsonl.rejected.jsonl").read_bytes()


def test_the_block_path_gives_what_the_line_path_gives(tmp_path, monkeypatch):
    """Blocks with a problem are worked line by line anyway; a file of mixed lines, validated with
    the block shortcut and without it, gives the same report and the same output files."""
    path = tmp_path / "mixed.jsonl"
    _mixed_file(path)
    with_blocks = _report_and_files(path, tmp_path / "blocks")
    monkeypatch.setattr(validate, "_valid_block", lambda block: None)
    line_by_line = _report_and_files(path, tmp_path / "lines")
    assert with_blocks == line_by_line
    assert with_blocks[0]["stats"]["samples"] > 3000 and with_blocks[2].count(b"\n") > 10


@pytest.mark.parametrize("block_bytes", [1, 2, 5, 64, 1 << 20])
def test_blocks_give_back_every_line_at_any_block_size(tmp_path, block_bytes):
    text = BOM + b'{"a": 1}\r\n\r\n{"b": "x"}\n\n  \n{"c": [1, 2]}\r\n{"d": "no final newline"}'
    (tmp_path / "f.jsonl").write_bytes(text)
    with open(tmp_path / "f.jsonl", "rb") as f:
        blocks = list(iter_blocks(f, block_bytes=block_bytes))
    lines = [line for block in blocks for line in block.lines]
    assert lines == [b'{"a": 1}\n', b"\n", b'{"b": "x"}\n', b"\n", b"  \n", b'{"c": [1, 2]}\n',
                     b'{"d": "no final newline"}\n']
    numbers = [block.first_line for block in blocks]
    assert numbers == sorted(numbers) and numbers[0] == 1
    assert all(b.first_line + len(b.lines) == nxt.first_line for b, nxt in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("block_bytes", [3, 100, 1 << 20])
def test_overlong_lines_are_replaced_wherever_they_fall(tmp_path, block_bytes):
    text = b'{"a": 1}\n' + b"x" * 50 + b"\n" + b'{"b": 2}\n' + b"y" * 500 + b"\n{}"
    (tmp_path / "f.jsonl").write_bytes(text)
    with open(tmp_path / "f.jsonl", "rb") as f:
        lines = [line for block in iter_blocks(f, max_line_bytes=40, block_bytes=block_bytes) for line in block.lines]
    assert [line.length if isinstance(line, LineTooLong) else line for line in lines] == [
        b'{"a": 1}\n', 51, b'{"b": 2}\n', 501, b"{}\n"]


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_workers_give_what_one_process_gives(tmp_path, workers):
    """Forked workers over shares of the file: the same errors on the same lines, the same
    statistics (duplicates across shares included), the same output and quarantine bytes. The file
    starts with a BOM, which only the first share may strip."""
    path = tmp_path / "mixed.jsonl"
    _mixed_file(path)
    path.write_bytes(BOM + path.read_bytes())
    one = _report_and_files(path, tmp_path / "one", workers=1)
    many = _report_and_files(path, tmp_path / "many", workers=workers)
    assert len(validate.line_ranges(str(path), workers)) == workers
    assert many == one
    assert one[0]["stats"]["duplicate_samples"] > 3000 and one[0]["error_count"] > 40
    assert list(tmp_path.glob("many/.*")) == []  # no part file is left behind


def test_only_the_first_share_strips_a_bom(tmp_path):
    """A BOM in the middle of a file is a byte of its line, so that line is invalid; here the
    second worker's share starts with it."""
    first, second = json.dumps(_chat(1, note="x" * 100)), json.dumps(_chat(2))
    path = tmp_path / "boms.jsonl"
    path.write_bytes(BOM + first.encode() + b"\n" + BOM + second.encode() + b"\n")
    assert [start for start, _ in validate.line_ranges(str(path), 2)] == [0, len(BOM) + len(first) + 1]
    for count in (1, 2):
        report = validate_messages(str(path), workers=count)
        assert [(e.line, e.reason) for e in report.errors] == [(2, "malformed JSON at byte 0: a byte order mark (BOM) before the value")]


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 40])
def test_line_ranges_cover_the_file_and_start_at_lines(tmp_path, parts):
    text = b'{"a": 1}\n' + b"x" * 300 + b"\n\n" + b'{"b": 2}\r\n' * 5 + b"y" * 50 + b"\n{}"
    path = tmp_path / "f.jsonl"
    path.write_bytes(text)
    ranges = validate.line_ranges(str(path), parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    assert all(end == nxt for (_, end), (nxt, _) in zip(ranges, ranges[1:]))
    assert all(start < end and (start == 0 or text[start - 1 : start] == b"\n") for start, end in ranges)
    assert len(ranges) <= parts  # cuts that fall in the same (long) line merge


def test_a_bad_workers_value_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="workers must be at least 1"):
        validate_messages(str(tmp_path / "absent.jsonl"), workers=0)


def _validate_to_dict(path: str, workers: int) -> dict:
    return validate_messages(path, workers=workers).to_dict()


def test_a_daemonic_process_validates_alone(tmp_path):
    """A worker (daemonic, as a pool's are) may not fork workers of its own; it reads the file
    itself instead of failing."""
    path = tmp_path / "mixed.jsonl"
    _mixed_file(path, copies=50)
    assert workers.run_forked(_validate_to_dict, [(str(path), 2)]) == [_validate_to_dict(str(path), 1)]


def _divide(a: int, b: int) -> float:
    return a / b


def test_a_worker_exception_is_raised_with_its_traceback():
    assert workers.run_forked(_divide, [(1, 2), (3, 4)]) == [0.5, 0.75]
    with pytest.raises(ZeroDivisionError) as info:
        workers.run_forked(_divide, [(1, 2), (1, 0), (5, 1)])
    assert "in a validation worker" in "".join(info.value.__notes__) and "_divide" in "".join(info.value.__notes__)


def test_a_worker_that_dies_is_reported():
    with pytest.raises(workers.WorkerFailed, match="exit code 3"):
        workers.run_forked(os._exit, [(3,)])


@pytest.fixture
def host_ignoring_sigterm_in_children():
    """SIGTERM caught as Airflow's task runner catches it (``task_runner.run``'s ``_on_term``),
    whose handler, in a forked child, returns: the child ignores the signal."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    yield
    signal.signal(signal.SIGTERM, previous)


def _sigterm_exit_code(process: multiprocessing.Process) -> int | None:
    process.terminate()
    process.join(10)
    code = process.exitcode
    if code is None:
        process.kill()
        process.join()
    return code


@pytest.mark.timeout(120)  # broken, it hangs
def test_children_forked_while_preparing_data_die_on_sigterm(host_ignoring_sigterm_in_children):
    """A pool (``datasets`` with ``num_proc``) ends its workers with SIGTERM and waits for them: a
    worker that ignores it hung the pool's exit, and the task, for good (CI, 2026-12-03)."""
    context = multiprocessing.get_context("fork")
    outside = context.Process(target=time.sleep, args=(60,))
    outside.start()
    assert _sigterm_exit_code(outside) is None, "the host's handler should keep a plain child alive"
    with workers.workers_die_on_sigterm():
        inside = context.Process(target=time.sleep, args=(60,))
        inside.start()
        for _ in range(20):  # the hang was one pool exit in a few (8th here)
            with context.Pool(2) as pool:
                assert pool.map(abs, [-1]) == [1]
    assert _sigterm_exit_code(inside) == -signal.SIGTERM


_SIGTERM_WHILE_FORKING = """
import multiprocessing, os, signal, time
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the host's, as above
os.register_at_fork(after_in_child=lambda: time.sleep(1))  # runs before workers' own hook
from airflow_provider_training_hub.data import workers
with workers.workers_die_on_sigterm():
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    child.terminate()  # still in the after-fork hooks
    child.join(10)
print(child.exitcode)
child.kill()
"""


def test_a_child_sent_sigterm_while_it_is_being_forked_still_dies():
    """A pool that terminates a worker it has just forked: the signal came before the child's own
    after-fork hook and was lost, and the pool's exit waited for good (CI, the test above, once in
    its 20 pools under load). A slow hook ahead of ours widens that window to a second."""
    done = subprocess.run([sys.executable, "-c", _SIGTERM_WHILE_FORKING], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == [str(-signal.SIGTERM)], done.stderr


@pytest.mark.timeout(120)  # broken, it hangs
def test_a_failing_worker_stops_the_others_under_such_a_host(host_ignoring_sigterm_in_children):
    with pytest.raises(ZeroDivisionError):
        workers.run_forked(_divide_later, [(1, 0, 0), (1, 1, 60)])


def _divide_later(a: int, b: int, seconds: float) -> float:
    time.sleep(seconds)
    return a / b


def test_automatic_workers_follow_the_cpus_and_the_file_size(tmp_path, monkeypatch):
    cpus = workers.available_cpus()
    assert 1 <= cpus <= os.cpu_count()
    path = tmp_path / "valid.jsonl"
    path.write_text("\n".join(VALID * 100) + "\n")  # ~20 KB
    assert validate._worker_ranges(str(path), None) == []  # far under 64 MiB a worker
    monkeypatch.setattr(validate, "MIN_BYTES_PER_WORKER", 1000)
    wanted = min(cpus, validate.MAX_AUTO_WORKERS)
    assert len(validate._worker_ranges(str(path), None)) == (wanted if wanted > 1 else 0)  # 0: no fork
    gz = tmp_path / "valid.jsonl.gz"
    gz.write_bytes(b"")
    assert validate._worker_ranges(str(gz), 4) == []  # a compressed file is read from its start
