"""Tasks: a model, its data and its metric, loaded from local files only (never from a hub).

The built-ins register here, by path, so that naming one imports nothing heavy; plugins
register the same way (:mod:`cola_fed.tasks.registry`).
"""

from cola_fed.tasks.registry import get_task, known_tasks, register_task, task_class

register_task("text-classification",
              "cola_fed.tasks.text_classification:TextClassificationTask")
register_task("digits", "cola_fed.tasks.digits:DigitsTask")
register_task("mnist", "cola_fed.tasks.mnist:MnistTask")
register_task("byte-lm", "cola_fed.tasks.byte_lm:ByteLMTask")
register_task("sequence-classification", "cola_fed.tasks.hf:SequenceClassificationTask")
register_task("causal-lm", "cola_fed.tasks.hf:CausalLMTask")
register_task("seq2seq", "cola_fed.tasks.hf:Seq2SeqTask")

__all__ = ["get_task", "known_tasks", "register_task", "task_class"]
