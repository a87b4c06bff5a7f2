"""One suite of the evaluate stage: its rows, its model, its Ray Data pass, its metrics and baselines.

``run_suite(ctx, suite)`` returns the suite's result (what ``metrics.json`` holds, in CLIP_benchmark's
layout: task, data, model, metrics, baselines, settings), plus ``details`` for the report and, for
generation suites, ``predictions`` (``{id, prediction, references}`` per item).
"""

from __future__ import annotations

import dataclasses

from pipelines.stages.evaluate import EMBEDDING_TASKS


class SuiteError(ValueError):
    """A suite cannot run on its inputs; the message names the suite and what to do."""


@dataclasses.dataclass
class SuiteRun:
    """What a suite's code needs from the stage.

    Args:
        ctx: the evaluate stage's ``StageContext``.
        suite: the suite's resolved ``SuiteConfig``.
    """

    ctx: object
    suite: object

    @property
    def data(self):
        return self.ctx.inputs[self.suite.data]

    @property
    def where(self) -> str:
        return f"evaluate suite {self.suite.name!r}"

    def model_source(self) -> dict:
        """The model of this suite: see ``pipelines.evaluation.models``."""
        cfg = self.ctx.config
        pretrain, instruct = self.ctx.inputs_of_kind("pretrain"), self.ctx.inputs_of_kind("instruct")
        if self.suite.task in EMBEDDING_TASKS:
            if pretrain:
                return {"kind": "pretrain", "manifest": pretrain[0]}
            if cfg.checkpoint.path:
                return {"kind": "checkpoint", "path": cfg.checkpoint.path, "heads": cfg.checkpoint.heads}
        if instruct:
            return {"kind": "instruct", "manifest": instruct[0]}
        raise SuiteError(f"{self.where}: no model input for a {self.suite.task} suite")

    def actor_options(self) -> dict:
        cfg = self.ctx.config
        return dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, cpus=cfg.cpus_per_worker,
                    num_gpus=cfg.gpus_per_worker)

    def text_tokenizer(self):
        """The sentencepiece processor the data was tokenized with (a `text-tokenizer` input of the stage)."""
        import sentencepiece as spm

        toks = self.ctx.inputs_of_kind("text-tokenizer")
        if len(toks) != 1:
            raise SuiteError(f"{self.where}: a {self.suite.task} suite reads text: give the stage the "
                             "`text-tokenizer` stage its data was tokenized with as an input (needs:)")
        info = toks[0].extra["tokenizer"]
        used = ((self.data.extra.get("tokenizers") or {}).get("text") or {}).get("sha256")
        if used and used != info["sha256"]:
            raise SuiteError(f"{self.where}: {self.data.stage!r} was tokenized by another text tokenizer than "
                             f"{toks[0].stage!r} (sha256 differ)")
        with toks[0].open(info["model"]) as f:
            return spm.SentencePieceProcessor(model_proto=f.read())

    def result(self, n: int, metrics: dict, baselines: dict, baseline_name: str, headline: str, *,
               lower_is_better=(), details=None, extra_data=None) -> dict:
        from pipelines.evaluation.models import describe
        from pipelines.typed import to_dict

        m = self.data
        return {"suite": self.suite.name, "task": self.suite.task,
                "data": {"stage": m.stage, "key": m.key, "split": self.suite.split, "n": int(n),
                         **(extra_data or {})},
                "model": describe(self.model_source()), "metrics": metrics, "baselines": baselines,
                "baseline_name": baseline_name, "headline": headline, "lower_is_better": list(lower_is_better),
                "settings": to_dict(self.suite), "details": details or {}}


    def check_model(self) -> None:
        """The data and the model speak the same tokens: the same text tokenizer (by sha256) for a model
        stage, the same vocabulary size for a checkpoint."""
        source = self.model_source()
        used = ((self.data.extra.get("tokenizers") or {}).get("text") or {})
        if source["kind"] == "checkpoint":
            from pipelines.evaluation.models import model_config

            vocab = model_config(source).text.vocab_size
            if self.suite.task != "linear_probe" and used.get("vocab_size") not in (None, vocab):
                raise SuiteError(f"{self.where}: {self.data.stage!r} was tokenized into {used['vocab_size']} pieces, "
                                 f"the checkpoint's text embedding has {vocab}: tokenize the data with the "
                                 "checkpoint's own sentencepiece model (text-tokenizer's model_path)")
            return
        trained = (source["manifest"].extra.get("text_tokenizer") or {}).get("sha256")
        if trained and used.get("sha256") and trained != used["sha256"]:
            raise SuiteError(f"{self.where}: {self.data.stage!r} and the model of {source['manifest'].stage!r} used "
                             "different text tokenizers (sha256 differ): tokenize the data with the model's")


def run_suite(ctx, suite) -> dict:
    """Score one suite (see the module docs)."""
    from pipelines.evaluation import embedding_suites, generation_suites

    run = SuiteRun(ctx, suite)
    run.check_model()
    fn = {"retrieval": embedding_suites.retrieval, "zero_shot_classification": embedding_suites.zero_shot,
          "linear_probe": embedding_suites.linear_probe, "captioning": generation_suites.captioning,
          "vqa": generation_suites.vqa, "asr": generation_suites.asr}[suite.task]
    return fn(run)
