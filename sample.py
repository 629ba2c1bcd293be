"""Sample text from a language-model run (nanoGPT's sample.py), streamed to stdout as it is generated.

    python sample.py run_dir=outputs/tinyshakespeare/lm_small/edp/seed1 prompt="ROMEO:" max_new_tokens=500 \\
        temperature=0.8 top_k=200
    python sample.py run_dir=... prompt_file=prompt.txt num_samples=3 seed=7

The prompt is encoded with the run's tokenizer; tokens are drawn from softmax(logits / temperature) over the
``top_k`` most likely (temperature=0: greedy), with the run's checkpoint (by default its own
``trainer.eval_checkpoint``) and a context of at most the run's ``task.block_size`` tokens. ``seed`` fixes the
draw. Options: conf/sample.yaml. Bad input (not an LM run, a bad setting) is one line on stderr and a non-zero
exit (``kernel_attention.cli``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig, OmegaConf

from kernel_attention import cli
from kernel_attention.registry import ConfigError, config_from_mapping


@dataclass
class SampleOptions:
    """conf/sample.yaml, typed."""

    run_dir: str
    checkpoint: str | None = None
    prompt: str = ""
    prompt_file: str | None = None
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 200
    num_samples: int = 1
    seed: int = 1337
    progress: bool = True
    data_dir: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens} and num_samples={self.num_samples} must be >= 1")
        if self.temperature < 0 or self.top_k < 0:
            raise ConfigError(f"temperature={self.temperature} and top_k={self.top_k} must be >= 0 "
                              "(temperature=0 is greedy, top_k=0 keeps every token)")
        if self.prompt and self.prompt_file:
            raise ConfigError("give prompt=... or prompt_file=..., not both")


@hydra.main(config_path="conf", config_name="sample", version_base="1.3")
@cli.job_errors("sample")
def main(cfg: DictConfig) -> None:
    import torch

    from kernel_attention.evaluation.evaluate import load_run
    from kernel_attention.tasks.text import read_text

    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir is missing; pass run_dir=<a language-model run folder that train.py wrote>")
    raw = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(raw, dict) and raw.get("prompt") is not None:
        raw["prompt"] = str(raw["prompt"])  # prompt=1984 arrives as an int
    opts = config_from_mapping(SampleOptions, raw, "sample")  # type: ignore[arg-type]
    opts.validate()
    prompt = read_text(opts.prompt_file) if opts.prompt_file else opts.prompt
    _, task, model, device = load_run(opts.run_dir, opts.checkpoint, opts.data_dir, opts.device)
    generator = torch.Generator().manual_seed(opts.seed)
    for i in range(opts.num_samples):
        t0 = time.perf_counter()
        sys.stdout.write(prompt)
        for piece in task.sample(model, prompt, opts.max_new_tokens, opts.temperature, opts.top_k, device,
                                 generator):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n" if opts.num_samples == 1 else "\n---------------\n")
        sys.stdout.flush()
        if opts.progress:
            rate = opts.max_new_tokens / max(time.perf_counter() - t0, 1e-9)
            print(f"sample {i + 1}/{opts.num_samples}: {opts.max_new_tokens} tokens, {rate:.1f} tokens/s",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(cli.run_hydra("sample", main))
