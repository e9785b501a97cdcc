"""Model families by name. Each module of the table declares one family (fttpu/models/families/base.py's
`Family`: config mapping, Hugging Face names, default classifier, output embedding, tiny config,
tokenizer) and registers it on import; see the README's "Adding a model family"."""

from fttpu.models.families import bert, llama, opt, roberta  # the table: each module registers its family
from fttpu.models.families.base import FAMILIES, Family, Names

MODULES = (bert, roberta, opt, llama)
__all__ = ["FAMILIES", "Family", "Names", "MODULES"]
