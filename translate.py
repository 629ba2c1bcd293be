"""Translate from the command line (fairseq-interactive): ``python translate.py run_dir=<run> < input.de > output.en``.

Raw source sentences, one per line (in the corpus's own form: raw for Multi30k, Moses-tokenized lowercase for
IWSLT'14), are encoded with the run's tokenizer and translated with beam search by the run's checkpoint (by
default its own ``trainer.eval_checkpoint``). Lines are read ``buffer_size`` at a time, translated in batches and
written in input order, flushed after every buffer, so output streams on long inputs; ``progress=true`` shows
lines done and lines/s on stderr. Options: conf/translate.yaml. Bad input (not a translation run, a line that
is not UTF-8 or longer than the model's positions) is one line on stderr and a non-zero exit
(``kernel_attention.cli``).

    python translate.py run_dir=outputs/multi30k/transformer_small/edp/seed1 beam=5 < test.de > test.hyp.en
    echo "Ein Hund läuft." | python translate.py run_dir=... beam=1 progress=false
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import hydra
from omegaconf import DictConfig, OmegaConf

from kernel_attention import cli
from kernel_attention.registry import ConfigError, config_from_mapping


@dataclass
class TranslateOptions:
    """conf/translate.yaml, typed."""

    run_dir: str
    checkpoint: str | None = None
    input: str = "-"
    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float | None = None
    max_len_b: int | None = None
    no_unk: bool = False
    max_tokens: int | None = None
    batch_size: int = 128
    buffer_size: int = 256
    progress: bool = True
    data_dir: str | None = None
    device: str = "auto"


def read_buffers(stream: IO[bytes], size: int, where: str) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, up to ``size`` lines) from a binary stream, decoded strictly as UTF-8."""
    from kernel_attention.data import DataError

    buf: list[str] = []
    first = 1
    for n, raw in enumerate(stream, start=1):
        try:
            buf.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            raise DataError(f"{where}: line {n} is not valid UTF-8; re-encode the input as UTF-8 "
                            "(e.g. iconv -f latin1 -t utf-8)") from None
        if len(buf) == size:
            yield first, buf
            first, buf = n + 1, []
    if buf:
        yield first, buf


@hydra.main(config_path="conf", config_name="translate", version_base="1.3")
@cli.job_errors("translate")
def main(cfg: DictConfig) -> None:
    from kernel_attention.evaluation.evaluate import load_run
    from kernel_attention.evaluation.options import EvalOptions

    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir is missing; pass run_dir=<a translation run folder that train.py wrote>")
    opts = config_from_mapping(TranslateOptions, OmegaConf.to_container(cfg, resolve=True), "translate")  # type: ignore[arg-type]
    if opts.buffer_size < 1 or opts.batch_size < 1:
        raise ConfigError("buffer_size and batch_size must be >= 1")
    _, task, model, device = load_run(opts.run_dir, opts.checkpoint, opts.data_dir, opts.device)
    eval_opts = EvalOptions(beam=opts.beam, lenpen=opts.lenpen, max_len_a=opts.max_len_a, max_len_b=opts.max_len_b,
                            no_unk=opts.no_unk, max_tokens=opts.max_tokens, batch_size=opts.batch_size)
    task.translate_lines(model, [], eval_opts, device)  # not a translation run, or bad beam settings: say so now
    where = "stdin" if opts.input == "-" else opts.input
    if opts.input != "-" and not Path(opts.input).is_file():
        raise ConfigError(f"input={opts.input} is not a file; pass a text file or input=- (stdin)")
    stream = sys.stdin.buffer if opts.input == "-" else open(opts.input, "rb")  # noqa: SIM115 (closed below)
    t0, done = time.perf_counter(), 0
    try:
        for first, lines in read_buffers(stream, opts.buffer_size, where):
            hyps = task.translate_lines(model, lines, eval_opts, device, where=where, first_line=first)
            sys.stdout.write("".join(h + "\n" for h in hyps))
            sys.stdout.flush()
            done += len(lines)
            if opts.progress:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                print(f"translate: {done} lines, {rate:.1f} lines/s", file=sys.stderr, flush=True)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


if __name__ == "__main__":
    sys.exit(cli.run_hydra("translate", main))
