"""lmms-eval models for both hosts (``plugin``: the ``lmms_eval.models`` entry point and ``vqtoken_hf``;
``llava_next``: ``vqtoken_llava_next``). This floor sits above the hosts it wraps (``hosts.hf``,
``hosts.llava_next``); nothing is imported here, so each model loads without the other's dependencies."""
