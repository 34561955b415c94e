import type { Command } from 'commander';

export type Shell = 'bash' | 'zsh' | 'fish';

interface Node {
  path: string[];
  subcommands: string[];
  flags: string[];
  description: string;
}

/** Walks the commander tree so completions can never drift from the real commands and flags. */
function collect(cmd: Command, path: string[] = [], out: Node[] = []): Node[] {
  const visible = cmd.commands.filter((c) => !(c as unknown as { _hidden?: boolean })._hidden);
  out.push({
    path,
    subcommands: visible.map((c) => c.name()),
    flags: cmd.options.flatMap((o) => [o.long, o.short].filter((x): x is string => !!x)).concat(['--help']),
    description: cmd.description(),
  });
  for (const c of visible) collect(c, [...path, c.name()], out);
  return out;
}

function bash(nodes: Node[]): string {
  const cases = nodes.map((n) => `    "${n.path.join(' ')}") words="${[...n.subcommands, ...n.flags].join(' ')}" ;;`).join('\n');
  return `# banger bash completion
_banger() {
  local cur path="" w i
  cur="\${COMP_WORDS[COMP_CWORD]}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    [[ "$w" == -* ]] && continue
    if _banger_known "\${path:+$path }$w"; then path="\${path:+$path }$w"; fi
  done
  local words=""
  case "$path" in
${cases}
  esac
  COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}
_banger_known() {
  case "$1" in
${nodes.map((n) => `    "${n.path.join(' ')}") return 0 ;;`).join('\n')}
  esac
  return 1
}
complete -F _banger banger
`;
}

function zsh(nodes: Node[]): string {
  return `#compdef banger
# banger zsh completion
_banger() {
  local -a path_words
  local w i
  for ((i = 2; i < CURRENT; i++)); do
    w="\${words[i]}"
    [[ "$w" == -* ]] && continue
    path_words+=("$w")
  done
  local key="\${(j: :)path_words}"
  local -a cands
  case "$key" in
${nodes.map((n) => `    "${n.path.join(' ')}") cands=(${[...n.subcommands, ...n.flags].map((s) => `'${s}'`).join(' ')}) ;;`).join('\n')}
    *) cands=() ;;
  esac
  compadd -- $cands
}
compdef _banger banger
`;
}

function fish(nodes: Node[]): string {
  const lines = ['# banger fish completion', 'complete -c banger -f'];
  for (const n of nodes) {
    const cond =
      n.path.length === 0
        ? '__fish_use_subcommand'
        : `__fish_seen_subcommand_from ${n.path[n.path.length - 1]}${n.subcommands.length ? `; and not __fish_seen_subcommand_from ${n.subcommands.join(' ')}` : ''}`;
    for (const s of n.subcommands) lines.push(`complete -c banger -n '${cond}' -a '${s}'`);
    for (const f of n.flags) {
      if (f.startsWith('--')) lines.push(`complete -c banger -n '${cond}' -l '${f.slice(2)}'`);
      else lines.push(`complete -c banger -n '${cond}' -s '${f.slice(1)}'`);
    }
  }
  return `${lines.join('\n')}\n`;
}

export function completionScript(program: Command, shell: Shell): string {
  const nodes = collect(program);
  return shell === 'bash' ? bash(nodes) : shell === 'zsh' ? zsh(nodes) : fish(nodes);
}
