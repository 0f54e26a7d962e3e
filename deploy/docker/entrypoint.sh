#!/bin/sh
# Entrypoint of the boxwatch image. The first argument picks the program:
#
#   exporter gpu|containers|journald ...   -> boxwatch-exporter ...
#   detector serve|train|... ...           -> boxwatch-detector ...
#   stack webhook ...                      -> boxwatch-stack ...
#   anything else (boxwatch-exporter, mlflow, sh, ...) runs as it is.
#
# Sharded detectors (a Kubernetes StatefulSet): with BOXWATCH_SHARD_COUNT=N set and no --shard
# argument given, `boxwatch-detector serve` gets `--shard I/N`, where I is BOXWATCH_SHARD_INDEX
# (the pod-index label through the downward API) or, when that is empty, the ordinal at the end
# of the pod's hostname (detector-2 -> 2).
set -eu

case "${1:-}" in
  exporter | detector | stack)
    program="boxwatch-$1"
    shift
    set -- "$program" "$@"
    ;;
esac

if [ "${1:-}" = "boxwatch-detector" ] && [ "${2:-}" = "serve" ] && [ -n "${BOXWATCH_SHARD_COUNT:-}" ]; then
  case " $* " in
    *" --shard "* | *" --shard="*) ;;
    *)
      index="${BOXWATCH_SHARD_INDEX:-}"
      if [ -z "$index" ]; then
        host="${HOSTNAME:-$(hostname)}"
        index="${host##*-}"
      fi
      case "$index$BOXWATCH_SHARD_COUNT" in
        "" | *[!0-9]*)
          echo "boxwatch-entrypoint: cannot derive the shard: index '$index' (BOXWATCH_SHARD_INDEX or the" \
            "hostname's -N suffix) and BOXWATCH_SHARD_COUNT '$BOXWATCH_SHARD_COUNT' must be numbers" >&2
          exit 2
          ;;
      esac
      if [ "$index" -ge "$BOXWATCH_SHARD_COUNT" ]; then
        echo "boxwatch-entrypoint: shard index $index is not below BOXWATCH_SHARD_COUNT=$BOXWATCH_SHARD_COUNT" >&2
        exit 2
      fi
      set -- "$@" --shard "$index/$BOXWATCH_SHARD_COUNT"
      ;;
  esac
fi

exec "$@"
