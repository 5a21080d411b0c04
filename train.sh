#!/usr/bin/env bash
# Fine-tuning launcher. STUB: the transformers/DeepSpeed trainer (issue 3) and the LLaVA-NeXT launcher
# (issue 4) are not implemented yet; this script says so instead of pretending to train.
echo "train.sh: not implemented yet (see issues 3 and 4); use 'llava-vqtoken compress' for the core" >&2
exit 1
