#!/usr/bin/env bash
# Reproduce CIFAR-10-LT (imbalance 100) in one GPU call: ResNet-32 under the LDAM-DRW protocol
# (config cifar10-LT_resnet32) and ResNet-18 under the paper's protocol (cifar10-LT_resnet18),
# each with `fsa-lt run --control` (Phase I, II, III and the No-Aug control), then a table
# against the targets. See benchmarks/README.md and docs/BENCHMARKS.md.
#
#   bash benchmarks/reproduce_cifar10_lt.sh            # run
#   bash benchmarks/reproduce_cifar10_lt.sh --dry      # print what would run, run nothing
#   TINY=1 DATA_ROOT=/tmp/fake bash benchmarks/reproduce_cifar10_lt.sh   # seconds-long CPU check
#
# Data (first that applies):
#   DATA_ROOT   a folder holding cifar-10-batches-py/ (used as it is)
#   PACK        a pack folder made by `cifar10.py pack` (default: .carry/pack in the repo); it is
#               unpacked into a temporary folder with CIFAR_TOOL (default: cifar10.py beside PACK)
# Knobs:
#   EPOCHS_R32 (200)  EPOCHS_R18 (300)  ITERS (6400: Phase III iterations)
#   ONLY=r32,r18      which runs, in that order       DEVICE=auto|cuda|cpu
#   MODEL_R32, MODEL_R18  other model names (TINY: resnet20)
#   EXTRA="k=v ..."   more overrides for both runs    NOTE (repro)   WORKDIR (a temporary folder)
#   BUDGET_S (560)    a run that would start past this many seconds is skipped, and a run is
#                     interrupted (SIGINT) when it reaches it, so the table still prints
#   RESULTS_DIR       where repro.md, the summaries and the logs are copied (default: $OUT if set)
#   KEEP_DATA=1       keep the unpacked data folder (removed at exit otherwise)
#   SCALE_SCHEDULE=1  with fewer epochs than the protocol, scale its milestones/step with them
#   TINY=1            a seconds-long schedule for a CPU check (1 epoch, 20 iterations, resnet20)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python

DRY=0
for a in "$@"; do
  case "$a" in
    --dry|--dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "reproduce_cifar10_lt.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

TINY="${TINY:-0}"
if [[ "$TINY" == 1 ]]; then
  : "${EPOCHS_R32:=1}" "${EPOCHS_R18:=1}" "${ITERS:=20}" "${MODEL_R32:=resnet20}" "${MODEL_R18:=resnet20}"
  TINY_OVERRIDES="train.batch_size=16 train.eval_batch_size=200 dataset.num_workers=0 extract.batch_size=100"
else
  TINY_OVERRIDES=""
fi
EPOCHS_R32="${EPOCHS_R32:-200}"
EPOCHS_R18="${EPOCHS_R18:-300}"
ITERS="${ITERS:-6400}"
MODEL_R32="${MODEL_R32:-resnet32}"
MODEL_R18="${MODEL_R18:-resnet18_cifar}"
ONLY="${ONLY:-r32,r18}"
NOTE="${NOTE:-repro}"
BUDGET_S="${BUDGET_S:-560}"
SCALE_SCHEDULE="${SCALE_SCHEDULE:-1}"
EXTRA="${EXTRA:-}"
RESULTS_DIR="${RESULTS_DIR:-${OUT:-}}"
START=$SECONDS


# ------------------------------------------------------------------------------------ data
DATA_NOTE=""
if [[ -n "${DATA_ROOT:-}" ]]; then
  if [[ ! -d "$DATA_ROOT/cifar-10-batches-py" ]]; then
    echo "reproduce: DATA_ROOT=$DATA_ROOT holds no cifar-10-batches-py/" >&2; exit 2
  fi
  DATA_NOTE="data: $DATA_ROOT (as given)"
else
  PACK="${PACK:-$REPO/.carry/pack}"
  CIFAR_TOOL="${CIFAR_TOOL:-$(dirname "$PACK")/cifar10.py}"
  if [[ ! -f "$PACK/meta.npz" ]]; then
    echo "reproduce: no data: set DATA_ROOT (a folder with cifar-10-batches-py/) or PACK (made by" \
         "'python ../shared/tools/cifar10.py pack ...'; $PACK/meta.npz not found)" >&2
    exit 2
  fi
  if [[ ! -f "$CIFAR_TOOL" ]]; then
    echo "reproduce: CIFAR_TOOL=$CIFAR_TOOL not found (copy ../shared/tools/cifar10.py beside the pack)" >&2
    exit 2
  fi
  if [[ "$DRY" == 1 ]]; then
    DATA_ROOT="<temporary folder>"
    echo "would run: $PY $CIFAR_TOOL unpack $PACK $DATA_ROOT"
  else
    DATA_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/fsa-cifar.XXXXXX")"
    [[ "${KEEP_DATA:-0}" == 1 ]] || trap 'rm -rf "$DATA_ROOT"' EXIT  # the unpacked copy only
    t0=$SECONDS
    if ! "$PY" "$CIFAR_TOOL" unpack "$PACK" "$DATA_ROOT"; then
      echo "reproduce: unpacking $PACK failed (see above)" >&2; exit 3
    fi
    DATA_NOTE="data: unpacked $PACK in $((SECONDS - t0)) s"
  fi
fi

if [[ "$DRY" == 1 ]]; then
  WORKDIR="${WORKDIR:-<temporary folder>}"
else
  WORKDIR="${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fsa-repro.XXXXXX")}"
  mkdir -p "$WORKDIR"
fi

if [[ "${DEVICE:-auto}" == auto ]]; then
  DEVICE="$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)"
fi

# ------------------------------------------------------------------------------------ runs
# schedule_overrides FULL_EPOCHS EPOCHS KIND: the protocol's lr schedule scaled to EPOCHS
schedule_overrides() {
  local full=$1 e=$2 kind=$3
  [[ "$SCALE_SCHEDULE" == 1 && "$e" != "$full" ]] || return 0
  if [[ "$kind" == multistep ]]; then  # LDAM-DRW: 5 warm-up of 200, x0.01 at 160, x0.0001 at 180
    local w=$(( (e * 5 + 100) / 200 )) m1=$(( (e * 160 + 100) / 200 )) m2=$(( (e * 180 + 100) / 200 ))
    (( m1 < 1 )) && m1=1
    (( m2 < m1 )) && m2=$m1
    echo "train.warmup_epochs=$w train.milestones=[$m1,$m2] train.eval_every=$(( e < 10 ? e : 10 ))"
  else                                 # the paper: /10 every 150 of 300
    local s=$(( (e + 1) / 2 ))
    (( s < 1 )) && s=1
    echo "train.step_size=$s train.eval_every=$(( e < 10 ? e : 10 ))"
  fi
}

declare -A CONFIG MODEL EPOCHS FULL KIND RC
CONFIG[r32]=cifar10-LT_resnet32; MODEL[r32]=$MODEL_R32; EPOCHS[r32]=$EPOCHS_R32; FULL[r32]=200; KIND[r32]=multistep
CONFIG[r18]=cifar10-LT_resnet18; MODEL[r18]=$MODEL_R18; EPOCHS[r18]=$EPOCHS_R18; FULL[r18]=300; KIND[r18]=step

echo "== fsa-lt CIFAR-10-LT reproduction"
"$PY" - "$DEVICE" <<'EOF' 2>/dev/null || true
import platform, sys, torch
dev = sys.argv[1]
card = torch.cuda.get_device_name(0) if dev.startswith("cuda") and torch.cuda.is_available() else "CPU"
print(f"device {dev} ({card}), torch {torch.__version__}, Python {platform.python_version()}")
EOF
echo "repo $REPO; workdir $WORKDIR; ${DATA_NOTE:-data: $DATA_ROOT}"
echo "schedule: ResNet-32 ${EPOCHS_R32} epochs ($MODEL_R32), ResNet-18 ${EPOCHS_R18} epochs ($MODEL_R18)," \
     "Phase III ${ITERS} iterations; runs: $ONLY; budget ${BUDGET_S} s"

IFS=',' read -r -a RUNS <<< "$ONLY"
for r in "${RUNS[@]}"; do
  if [[ -z "${CONFIG[$r]:-}" ]]; then echo "reproduce: ONLY: unknown run '$r' (r32, r18)" >&2; exit 2; fi
  e=${EPOCHS[$r]}
  every=$(( ITERS >= 8 ? ITERS / 8 : 1 ))
  # shellcheck disable=SC2207
  ovr=( "dataset.root=$DATA_ROOT" dataset.download=false "dataset.imb_ratio=100" "model.name=${MODEL[$r]}"
        "train.epochs=$e" $(schedule_overrides "${FULL[$r]}" "$e" "${KIND[$r]}")
        "finetune.iterations=$ITERS" "finetune.eval_every=$every" "finetune.save_every=$ITERS"
        $TINY_OVERRIDES $EXTRA )
  cmd=( "$PY" -m fsa_lt.cli run --config "${CONFIG[$r]}" --note "$NOTE" --workdir "$WORKDIR" --device "$DEVICE"
        --control "${ovr[@]}" )
  if [[ "$DRY" == 1 ]]; then
    echo "would run ($r): ${cmd[*]}"
    continue
  fi
  left=$(( BUDGET_S - (SECONDS - START) ))
  if (( left < 20 )); then
    echo "== $r: skipped, ${left} s of the ${BUDGET_S} s budget left"
    RC[$r]=skipped
    continue
  fi
  echo
  echo "== $r: ${CONFIG[$r]} (${MODEL[$r]}), ${e} epochs, ${ITERS} iterations; at most ${left} s"
  log="$WORKDIR/${r}_run.log"
  t0=$SECONDS
  # The whole log goes to $log; the terminal gets the evaluations and the summary. Foreground
  # pipeline, so that timeout's SIGINT reaches Python (background jobs ignore SIGINT).
  timeout --signal=INT --kill-after=15 "$left" "${cmd[@]}" 2>&1 | tee "$log" \
    | grep --line-buffered -E 'test top1|final:|store:|iterations in|mode cached|error|Error|interrupted|^\| |^# |Time this'
  rc=${PIPESTATUS[0]}
  RC[$r]=$rc
  echo "== $r: exit $rc after $((SECONDS - t0)) s"
  if (( rc != 0 )); then
    (( rc == 124 || rc == 130 )) && echo "== $r: stopped at the budget" || { echo "-- last lines of $log:"; tail -n 25 "$log"; }
  fi
done

[[ "$DRY" == 1 ]] && exit 0

# ------------------------------------------------------------------------------------ report
REPORT="$WORKDIR/repro.md"
"$PY" - "$WORKDIR" "$NOTE" "$ONLY" "$EPOCHS_R32" "$EPOCHS_R18" "$ITERS" "$MODEL_R32" "$MODEL_R18" "$DEVICE" \
  > "$REPORT" <<'EOF'
import json, re, statistics, sys
from pathlib import Path

wd, note, only, e32, e18, iters, m32, m18, device = sys.argv[1:10]
e32, e18, iters = int(e32), int(e18), int(iters)
runs = {"r32": ("cifar10-LT_resnet32", "ResNet-32", m32, e32, 200, "resnet32"),
        "r18": ("cifar10-LT_resnet18", "ResNet-18", m18, e18, 300, "resnet18_cifar")}
wd = Path(wd)
out = []
p = out.append


def fmt(v, nd=2):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def epoch_times(config):
    log = wd / "log" / "phase_i" / config / note / "log.txt"
    try:
        text = log.read_text()
    except OSError:
        return []
    return [float(m.group(1)) for m in re.finditer(r"epoch\s+\d+/\d+ loss .*? lr \S+\s+([\d.]+)s", text)]


summaries, full = {}, {}
for key in only.split(","):
    config, title, model, epochs, full_epochs, paper_model = runs[key]
    full[key] = epochs == full_epochs and iters == 6400 and model == paper_model
    path = wd / "log" / "run" / config / note / "summary.json"
    p(f"## {title}: {config}, model {model}, {epochs} epochs, Phase III {iters} iterations")
    p("")
    et = epoch_times(config)
    if et:
        steady = et[1:] or et
        p(f"Phase I epochs done: {len(et)}; first {et[0]:.1f} s, median {statistics.median(steady):.2f} s "
          f"(the log's 0.1 s resolution); {full_epochs} epochs at that rate: "
          f"{et[0] + (full_epochs - 1) * statistics.median(steady):.0f} s of training")
        p("")
    if not path.is_file():
        p("no summary.json: the run did not finish (see its log)")
        p("")
        continue
    s = json.loads(path.read_text())
    summaries[key] = s
    p("| model | top1 | many | medium | few | head | tail |")
    p("|---|---|---|---|---|---|---|")
    for r in s["rows"]:
        p(f"| {r['model']} | " + " | ".join(fmt(r.get(k)) for k in ("top1", "many", "medium", "few", "head", "tail")) + " |")
    t = s.get("times_s", {})
    p("")
    p("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    p("")


def top1(key, which):
    s = summaries.get(key)
    if not s:
        return None
    for r in s["rows"]:
        if r["model"].startswith(which):
            return r["top1"]
    return None


def times(key):
    return (summaries.get(key) or {}).get("times_s", {})


def check(name, target, value, ok, key, unit=""):
    if value is None:
        verdict = "not run"
    elif not full.get(key):
        verdict = "n/a (reduced schedule)"
    else:
        verdict = "met" if ok(value) else "NOT met"
    p(f"| {name} | {target} | {fmt(value, 2 if unit == '%' else 1)} | {verdict} |")


t32, t18 = times("r32"), times("r18")
three = sum(t32[k] for k in ("phase_i", "phase_ii", "phase_iii")) if all(k in t32 for k in ("phase_i", "phase_ii", "phase_iii")) else None
p(f"## Targets (device {device})")
p("")
p("| check | target | measured | result |")
p("|---|---|---|---|")
check("FSA ResNet-18 top-1 %", ">= 80.57 (paper)", top1("r18", "Phase III, FSA"), lambda v: v >= 80.57, "r18", "%")
check("FSA ResNet-32 top-1 %", ">= 77.0 (LDAM-DRW)", top1("r32", "Phase III, FSA"), lambda v: v >= 77.0, "r32", "%")
check("Phase I ResNet-18 top-1 %", "~ 75.16 (paper CE, +-1.5)", top1("r18", "Phase I"), lambda v: abs(v - 75.16) <= 1.5, "r18", "%")
for key, title in (("r32", "ResNet-32"), ("r18", "ResNet-18")):
    f, c = top1(key, "Phase III, FSA"), top1(key, "Phase III, augmentation off")
    gain = None if f is None or c is None else f - c
    check(f"{title} FSA minus No-Aug control, points", "> 0", gain, lambda v: v > 0, key, "%")
check("Phase I ResNet-32, 200 epochs, s", "<= 60 (H100/H200)", t32.get("phase_i"), lambda v: v <= 60, "r32")
check("ResNet-32 Phases I+II+III, s", "<= 90", three, lambda v: v <= 90, "r32")
check("Phase I ResNet-18, 300 epochs, s", "<= 180", t18.get("phase_i"), lambda v: v <= 180, "r18")
print("\n".join(out))
EOF

echo
echo "================================================================ results"
cat "$REPORT"
if [[ -n "$RESULTS_DIR" ]]; then
  mkdir -p "$RESULTS_DIR"
  cp "$REPORT" "$RESULTS_DIR/repro.md"
  for r in "${RUNS[@]}"; do
    [[ -f "$WORKDIR/${r}_run.log" ]] && cp "$WORKDIR/${r}_run.log" "$RESULTS_DIR/${r}_run.log"
    s="$WORKDIR/log/run/${CONFIG[$r]}/$NOTE/summary.json"
    [[ -f "$s" ]] && cp "$s" "$RESULTS_DIR/${r}_summary.json"
  done
  echo "(copied to $RESULTS_DIR)"
fi
echo "total $((SECONDS - START)) s"
fail=0
for r in "${RUNS[@]}"; do
  [[ "${RC[$r]:-0}" == 0 ]] || fail=1
done
exit $fail
