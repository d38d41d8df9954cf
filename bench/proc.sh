# Process helpers shared by bench/run.sh, bench/scale.sh and the probes (sourced, not run).

# running PID...: true while any of them runs. A zombie has exited; only its reaping by the
# parent (PID 1 for a daemon) is left, which some init processes do only once a second or two.
running() {
    local p s
    for p in "$@"; do
        s=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        case ${s%% *} in Z | X | '') ;; *) return 0 ;; esac
    done
    return 1
}
