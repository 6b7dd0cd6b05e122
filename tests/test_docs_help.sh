#!/bin/sh
# The tools' --help texts and their docs pages cannot drift apart: for each
# tool, every long option its --help prints appears in the tool's options
# block on its page, and every option that block lists (in its first column)
# appears in --help. A block is the text between
#     <!-- options: amdim-NAME -->   and   <!-- /options -->
# on the tool's page (amdim-pack: pack.md; amdim-load, amdim-peek: loader.md;
# the others: training.md), exactly one per tool. Also checks that every
# relative link in docs/*.md and README.md names a file that exists.
#
#   test_docs_help.sh DOCS_DIR TOOL...     (TOOL: the built amdim-* programs)
#
# Exit 0 pass, 1 fail, 77 (skip) when a tool is missing.
set -u

me=test_docs_help
[ $# -ge 2 ] || { echo "usage: $0 DOCS_DIR TOOL..." >&2; exit 2; }
docs=$1
shift
[ -d "$docs" ] || { echo "$me: no docs directory $docs"; exit 1; }
for tool in "$@"; do
    if [ ! -x "$tool" ]; then
        echo "$me: $tool is missing or not executable; skipping"
        exit 77
    fi
done

failures=0
fail() {
    echo "$me: FAIL: $*"
    failures=$((failures + 1))
}
# long options in text on stdin, one per line, sorted, unique
long_options() { grep -o -e '--[a-z][a-z0-9-]*' | sort -u; }

for tool in "$@"; do
    name=$(basename "$tool")
    case $name in
        amdim-pack) page=pack.md ;;
        amdim-load | amdim-peek) page=loader.md ;;
        amdim-train | amdim-embed | amdim-plot | amdim-probe | amdim-viz) page=training.md ;;
        *) fail "$name: no docs page known for this tool"; continue ;;
    esac
    if [ ! -f "$docs/$page" ]; then
        fail "$name: $docs/$page does not exist"
        continue
    fi
    if ! help=$("$tool" --help 2>/dev/null); then
        fail "$name --help did not exit 0"
        continue
    fi
    blocks=$(grep -c -e "<!-- options: $name -->" "$docs/$page")
    if [ "$blocks" -ne 1 ]; then
        fail "$name: $page has $blocks '<!-- options: $name -->' blocks (want 1)"
        continue
    fi
    block=$(awk -v start="<!-- options: $name -->" '
        index($0, start) { on = 1; next }
        on && index($0, "<!-- /options -->") { exit }
        on { print }' "$docs/$page")
    # the first column of the block's table rows
    listed=$(printf '%s\n' "$block" | awk -F'|' '/^\|/ { print $2 }' | long_options)
    from_help=$(printf '%s\n' "$help" | long_options)
    n_help=0
    for opt in $from_help; do
        n_help=$((n_help + 1))
        # the whole option, not the start of a longer one (--eval in --eval-split)
        printf '%s\n' "$block" | grep -q -E -e "${opt}([^a-z0-9-]|\$)" ||
            fail "$name: --help prints $opt, but the options block in docs/$page does not mention it"
    done
    n_listed=0
    for opt in $listed; do
        n_listed=$((n_listed + 1))
        printf '%s\n' "$from_help" | grep -q -x -e "$opt" ||
            fail "$name: docs/$page lists $opt, but $name --help does not print it"
    done
    echo "$me: $name: $n_help long options in --help, $n_listed listed in docs/$page"
done

# relative links: [text](target) in docs/*.md and the README beside docs/
root=$(cd "$docs/.." && pwd)
n_links=0
for md in "$docs"/*.md "$root/README.md"; do
    [ -f "$md" ] || continue
    dir=$(dirname "$md")
    for target in $(grep -o -e '](\([^)#]*\)' "$md" | sed -e 's/^](//'); do
        case $target in
            http://* | https://* | mailto:* | '') continue ;;
        esac
        n_links=$((n_links + 1))
        [ -e "$dir/$target" ] || fail "$(basename "$md"): link to $target, which does not exist"
    done
done
echo "$me: $n_links relative links checked"

if [ "$failures" -ne 0 ]; then
    echo "$me: $failures checks failed"
    exit 1
fi
echo "$me: ok"
exit 0
