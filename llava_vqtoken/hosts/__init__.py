"""Host adapters, one per host library; import the one you use (``llava_vqtoken.hosts.hf`` registers the
transformers classes). Nothing is imported here, so each host loads without the others' dependencies."""
