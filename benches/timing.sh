# Shared by the shell benchmarks (sourced): wall-clock timing helpers.
now() { date +%s.%N; }
# median_of CMD...: runs CMD $TRIALS times (output discarded), prints the median wall seconds.
median_of() {
  local times=()
  for _ in $(seq "$TRIALS"); do
    local t0 t1
    t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.4f", (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}
