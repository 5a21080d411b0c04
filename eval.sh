#!/usr/bin/env bash
# lmms-eval launcher. STUB: the lmms-eval model plugins and report (issue 5) are not implemented yet.
echo "eval.sh: not implemented yet (see issue 5); use 'llava-vqtoken compress' for the core" >&2
exit 1
