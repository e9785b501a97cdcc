# Shared by the launchers (sourced): shell quoting for printed and generated command lines, usage errors.

# Shell-quote each argument (POSIX single quotes): for printing and for remote or batch command lines.
q() {
  local a out="" sq="'" esc="'\\''"
  for a in "$@"; do
    if [[ -n $a && $a != *[!A-Za-z0-9_./:=,@%+-]* ]]; then out+=" $a"; else out+=" '${a//$sq/$esc}'"; fi
  done
  printf '%s' "${out# }"
}

# A usage error: the message, where to look, exit 2.
die() {
  local name
  name=$(basename "$0")
  echo "$name: $*" >&2
  echo "see launch/$name --help" >&2
  exit 2
}
