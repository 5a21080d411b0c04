#!/usr/bin/env bash
# Mutation testing of the core and the config with mutmut (docs/TESTING.md).
#
#   scripts/mutation.sh [FILES...]     default: llava_vqtoken/core/*.py llava_vqtoken/config.py
#   scripts/mutation.sh --survivors FILES...   rerun only the last run's survivors (and "no tests") of FILES,
#                                              after new tests; the other mutants keep their results
#   MUTMUT_NAMES="PATTERN ..." scripts/mutation.sh FILES...   only the mutants whose names match (fnmatch)
#   MUTMUT_CHILDREN=N (parallel mutants), MUTMUT_PYTHON=python3 (another interpreter than .venv's),
#   MUTMUT_WHEELS=DIR (install locks/mutation.txt from the wheels in DIR, without a package index),
#   MUTMUT_SAMPLE=N [MUTMUT_SAMPLE_SEED=S] (run a uniform random sample of N mutants per file; the summary
#   then gives the score's 95% interval)
#
# Installs the exact versions of locks/mutation.txt into .mutmut-lib/ (never into .venv), copies the
# package, the tests and pyproject.toml into .mutmut-work/ with a [tool.mutmut] section whose
# only_mutate is FILES, runs `mutmut run --max-children 1` there and prints the score
# killed / (killed + survived) -- "no tests" counts as survived, timeouts are listed apart -- and the
# survivors. The tree itself is never edited. Needs the project venv (.venv, scripts/bootstrap.sh).
set -euo pipefail
# (all in a function: bash reads a script as it runs, so an edit during a run would break it)
main() {
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${MUTMUT_PYTHON:-$ROOT/.venv/bin/python}"  # another interpreter (a GPU machine without .venv)
LIB="$ROOT/.mutmut-lib"
WORK="$ROOT/.mutmut-work"
LOCK="$ROOT/locks/mutation.txt"
CHILDREN="${MUTMUT_CHILDREN:-1}"

die() { echo "mutation.sh: $*" >&2; exit 2; }
command -v "$PY" >/dev/null || die "no interpreter $PY (the project venv .venv: scripts/bootstrap.sh; or set MUTMUT_PYTHON)"

# Tests per mutated file: a focused list of fast known-answer tests (a survivor costs a full run of
# every covering test, so the list is kept short). A file without an entry gets the broad list below.
focused_tests() {
  case "$1" in
    llava_vqtoken/core/baselines.py) echo tests/test_known_answers.py tests/test_mutation_baselines.py;;
    llava_vqtoken/core/vq_attention.py)
      echo tests/test_known_answers.py tests/test_vq_attention_motion.py tests/test_mutation_vq_attention.py;;
    llava_vqtoken/core/graphs.py) echo tests/test_mutation_graphs.py;;
    llava_vqtoken/core/keymap.py) echo tests/test_mutation_keymap.py;;
    llava_vqtoken/core/metrics.py) echo tests/test_metrics.py tests/test_mutation_metrics.py;;
    llava_vqtoken/config.py) echo tests/test_config_surface.py tests/test_mutation_config.py;;
    llava_vqtoken/core/kmeans.py)  # test_kmeans.py (20 s) and test_clustering_known_answers.py (18 s): too slow
      echo tests/test_known_answers.py tests/test_mutation_kmeans.py;;
    llava_vqtoken/core/triton_kmeans.py)  # mutmut skips the (decorated) kernels; on the CPU the host functions are
      echo tests/test_triton_kmeans.py tests/test_mutation_kmeans.py;;  # reached in-process by stand-in kernels
    llava_vqtoken/core/adaptive.py) echo tests/test_known_answers.py tests/test_mutation_adaptive.py;;
    llava_vqtoken/core/compressor.py) echo tests/test_compressor.py tests/test_mutation_compressor.py;;
    llava_vqtoken/core/streaming.py) echo tests/test_mutation_streaming.py;;  # test_streaming.py: 27 s, too slow
    *) return 1;;
  esac
}
BROAD=()
for t in test_kmeans test_adaptive test_compressor test_known_answers test_metrics test_vq_attention_motion \
         test_determinism test_config_surface; do
  [ -f "tests/$t.py" ] && BROAD+=("tests/$t.py")
done
for t in tests/test_mutation_*.py; do [ -f "$t" ] && BROAD+=("$t"); done

SURVIVORS=0
if [ "${1:-}" = "--survivors" ]; then SURVIVORS=1; shift; [ $# -gt 0 ] || die "--survivors needs the FILES of the last run"; fi
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=(llava_vqtoken/core/*.py llava_vqtoken/config.py)
for f in "${FILES[@]}"; do
  case "$f" in llava_vqtoken/*.py|llava_vqtoken/*\*) ;; *) die "not a file of the package: $f";; esac
  [ -f "$f" ] || [[ "$f" == *\* ]] || die "no such file: $f"
done
# the union of the focused lists when every file has one, else the broad list; files that do not
# exist (a test not written yet) are skipped
TESTS=()
for f in "${FILES[@]}"; do
  if list=$(focused_tests "$f"); then
    for t in $list; do [ -f "$t" ] && [[ " ${TESTS[*]} " != *" $t "* ]] && TESTS+=("$t"); done
  else
    TESTS=("${BROAD[@]}"); break
  fi
done
[ ${#TESTS[@]} -gt 0 ] || die "no test file exists for ${FILES[*]}"

stamp="$LIB/.lock-$(sha256sum "$LOCK" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$LIB"
  # MUTMUT_WHEELS=DIR: install from wheels in DIR only (a machine without a package index, e.g. the GPU one)
  offline=(); [ -n "${MUTMUT_WHEELS:-}" ] && offline=(--no-index --find-links "$MUTMUT_WHEELS")
  "$PY" -m pip install --quiet --no-deps "${offline[@]}" --target "$LIB" -r "$LOCK" \
    2> >(grep -v "is ignored: it is neither" >&2)
  touch "$stamp"
fi

mkdir -p "$WORK"
rm -rf "$WORK/llava_vqtoken" "$WORK/tests"
cp -r llava_vqtoken tests "$WORK/"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
toml_list() { local out="" x; for x in "$@"; do out+="\"$x\", "; done; echo "[${out%, }]"; }
{
  sed '/^\[tool\.mutmut\]/,$d' pyproject.toml
  echo "[tool.mutmut]"
  echo "source_paths = [\"llava_vqtoken\"]"
  echo "only_mutate = $(toml_list "${FILES[@]}")"
  echo "pytest_add_cli_args_test_selection = $(toml_list "${TESTS[@]}")"
  echo "pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-x\", \"-q\"]"
  echo "process_isolation = \"forkserver\"  # torch's thread pools do not survive a plain fork"
} > "$WORK/pyproject.toml"

cd "$WORK"
echo "mutation.sh: mutating ${FILES[*]}"
echo "mutation.sh: tests ${TESTS[*]}"
read -r -a NAMES <<< "${MUTMUT_NAMES:-}"
if [ "$SURVIVORS" = 1 ]; then
  [ -f mutmut-results.txt ] || die "no earlier run in .mutmut-work to take survivors from"
  mods=$(printf '%s\n' "${FILES[@]}" | sed 's/\.py$//; s#/#.#g' | paste -sd'|')
  mapfile -t NAMES < <(grep -E "^\s*($mods)\.\S+: (survived|no tests)$" mutmut-results.txt | sed -E 's/^\s*(\S+):.*/\1/')
  [ ${#NAMES[@]} -gt 0 ] || die "the last run left no survivor in ${FILES[*]}"
  echo "mutation.sh: rerunning ${#NAMES[@]} survivors"
fi
if [ -n "${MUTMUT_SAMPLE:-}" ] && [ "$SURVIVORS" = 0 ] && [ ${#NAMES[@]} -eq 0 ]; then
  # generate every mutant (and the test stats) with a filter that matches none, then draw the sample
  PYTHONPATH="$LIB" "$PY" -m mutmut run --max-children "$CHILDREN" "__generate_only__" >mutmut-generate.log 2>&1 || true
  mapfile -t NAMES < <("$PY" - "$MUTMUT_SAMPLE" "${MUTMUT_SAMPLE_SEED:-0}" "${FILES[@]}" <<'PYEOF'
import json, random, sys
n, seed, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
for f in files:
    keys = sorted(json.load(open(f"mutants/{f}.meta"))["exit_code_by_key"])
    for name in random.Random(seed).sample(keys, min(n, len(keys))):
        print(name)
PYEOF
)
  [ ${#NAMES[@]} -gt 0 ] || die "no mutants generated (log: .mutmut-work/mutmut-generate.log)"
  echo "mutation.sh: a uniform sample of ${#NAMES[@]} mutants (MUTMUT_SAMPLE=$MUTMUT_SAMPLE per file, seed ${MUTMUT_SAMPLE_SEED:-0})"
fi
PYTHONPATH="$LIB" "$PY" -m mutmut run --max-children "$CHILDREN" "${NAMES[@]}" >mutmut-run.log 2>&1 \
  || { tail -20 mutmut-run.log; die "mutmut run failed (log: .mutmut-work/mutmut-run.log)"; }
PYTHONPATH="$LIB" "$PY" -m mutmut results --all true >mutmut-results.txt 2>&1
"$PY" - "${FILES[@]}" <<'PYEOF'
import fnmatch, re, sys
files = sys.argv[1:]
mods = [f[:-3].replace("/", ".") if f.endswith(".py") else f.replace("/", ".") for f in files]
rows = []
for line in open("mutmut-results.txt"):
    m = re.match(r"\s*(\S+): (.+)$", line)
    if m and any(fnmatch.fnmatch(m[1], f"{p}.*") for p in mods):
        rows.append((m[1], m[2].strip()))
by = {}
for name, status in rows:
    by.setdefault(status, []).append(name)
killed = len(by.get("killed", []))
surv = by.get("survived", []) + by.get("no tests", [])
total = killed + len(surv)
score = 100.0 * killed / total if total else float("nan")
print(f"mutants: {len(rows)}  " + "  ".join(f"{k}: {len(v)}" for k, v in sorted(by.items())))
print(f"score: {killed}/{total} killed = {score:.1f}%  (timeouts apart: {len(by.get('timeout', []))})")
if by.get("not checked"):  # a sample: the score's 95% Wilson interval
    z, p = 1.96, killed / total if total else 0.0
    half = z * ((p * (1 - p) + z * z / (4 * total)) / total) ** 0.5 / (1 + z * z / total) if total else 0.0
    mid = (p + z * z / (2 * total)) / (1 + z * z / total) if total else 0.0
    print(f"checked {total + len(by.get('timeout', []))} of {len(rows)} mutants; 95% interval of the score: "
          f"{100 * (mid - half):.1f}% to {100 * (mid + half):.1f}%")
for status in ("survived", "no tests", "timeout", "suspicious"):
    for name in by.get(status, []):
        print(f"  {status}: {name}")
PYEOF
}
main "$@"
