use super::*;

fn expand_with(template: &[&str], cx: Context<'_>) -> Vec<String> {
    let template: Vec<String> = template.iter().map(|s| s.to_string()).collect();
    Template::parse(&template).expand(&cx)
}

fn cx(item: &str) -> Context<'_> {
    Context {
        item,
        colsep: None,
        line: 7,
        slot: 2,
    }
}

/// The one argument `arg` expands to for `item`.
fn one(arg: &str, item: &str) -> String {
    let out = expand_with(&["echo", arg], cx(item));
    assert_eq!(out.len(), 2, "{arg:?} for {item:?} gave {out:?}");
    out[1].clone()
}

#[test]
fn item_and_quoted_item() {
    assert_eq!(expand_with(&["echo"], cx("a b")), ["echo", "a b"]);
    assert_eq!(
        expand_with(&["cp", "{}", "{}.bak"], cx("x")),
        ["cp", "x", "x.bak"]
    );
    assert_eq!(
        expand_with(&["sh", "-c", "echo {q}"], cx("it's $(x)")),
        ["sh", "-c", r"echo 'it'\''s $(x)'"]
    );
    // Nothing is substituted inside the item.
    assert_eq!(one("{}", "{q}{}{#}"), "{q}{}{#}");
    assert_eq!(one("{q}", "{}"), "'{}'");
    assert_eq!(one("{.}", "{/}.x"), "{/}");
}

#[test]
fn extension_follows_gnu_parallel() {
    assert_eq!(one("{.}", "x.jpg"), "x");
    assert_eq!(one("{.}", "dir/x.tar.gz"), "dir/x.tar");
    // Only the basename's extension goes.
    assert_eq!(one("{.}", "a.b/c"), "a.b/c");
    assert_eq!(one("{.}", "sub.dir/foo.jpg"), "sub.dir/foo");
    assert_eq!(one("{.}", "noext"), "noext");
    // `s:\.[^/.]+$::`: a dotfile loses everything, a trailing dot stays.
    assert_eq!(one("{.}", ".bashrc"), "");
    assert_eq!(one("{.}", "home/.bashrc"), "home/");
    assert_eq!(one("{.}", "foo."), "foo.");
    assert_eq!(one("{.}", "a/b.c/"), "a/b.c/");
    assert_eq!(one("{.}", "naïve.résumé"), "naïve");
    assert_eq!(one("{.}", "日本.語"), "日本");
}

#[test]
fn basename_dirname() {
    for (item, base, dir, base_noext) in [
        ("dir/x.tar.gz", "x.tar.gz", "dir", "x.tar"),
        ("x.jpg", "x.jpg", ".", "x"),
        ("a/b/c", "c", "a/b", "c"),
        ("/a", "a", "/", "a"),
        ("/a/b.c", "b.c", "/a", "b"),
        ("./a", "a", ".", "a"),
        // A trailing slash: `{/}` is `s:.*/::`, `{//}` is dirname(1).
        ("a/b/", "", "a", ""),
        ("a/b//", "", "a", ""),
        ("/", "", "/", ""),
        ("//a", "a", "/", "a"),
        ("a//b", "b", "a", "b"),
        (".bashrc", ".bashrc", ".", ""),
        (
            "répertoire/ファイル.txt",
            "ファイル.txt",
            "répertoire",
            "ファイル",
        ),
    ] {
        assert_eq!(one("{/}", item), base, "{{/}} of {item:?}");
        assert_eq!(one("{//}", item), dir, "{{//}} of {item:?}");
        assert_eq!(one("{/.}", item), base_noext, "{{/.}} of {item:?}");
    }
    assert_eq!(dirname(""), ".");
    assert_eq!(basename(""), "");
    assert_eq!(strip_extension(""), "");
}

#[test]
fn line_and_slot() {
    assert_eq!(
        expand_with(&["run", "{#}", "--slot={%}", "{}"], cx("i")),
        ["run", "7", "--slot=2", "i"]
    );
    // `{#}` or `{%}` alone is a replacement string: nothing is appended.
    assert_eq!(expand_with(&["echo", "{#}"], cx("i")), ["echo", "7"]);
    assert_eq!(expand_with(&["echo", "{%}"], cx("i")), ["echo", "2"]);
    // Their `q` forms (README: "any of the above, shell-quoted"): numbers,
    // the same word quoted or not.
    assert_eq!(
        expand_with(&["sh", "-c", "echo {#q} {%q}"], cx("i")),
        ["sh", "-c", "echo 7 2"]
    );
}

#[test]
fn composed_with_quoting() {
    assert_eq!(one("{.q}", "it's.txt"), r"'it'\''s'");
    assert_eq!(one("{/q}", "d/a b"), "'a b'");
    assert_eq!(one("{//q}", "a b/c"), "'a b'");
    assert_eq!(one("{/.q}", "d/x y.z"), "'x y'");
}

#[test]
fn columns() {
    let tab = Regex::new("\t").unwrap();
    let cx = |item| Context {
        item,
        colsep: Some(&tab),
        line: 1,
        slot: 1,
    };
    assert_eq!(
        expand_with(&["cp", "{1}", "{2}", "{}"], cx("a/x.c\tb")),
        ["cp", "a/x.c", "b", "a/x.c\tb"]
    );
    // Combined with a part, from the end, quoted.
    assert_eq!(
        expand_with(
            &["x", "{1.}", "{1/}", "{1//}", "{1/.}", "{-1}", "{-2/}", "{2q}"],
            cx("d/f.c\tg h")
        ),
        ["x", "d/f", "f.c", "d", "f", "g h", "f.c", "'g h'"]
    );
    // A missing column is empty; empty columns count.
    assert_eq!(
        expand_with(&["x", "{3}", "{2}", "{-9}"], cx("a\t\tc")),
        ["x", "c", "", ""]
    );
    assert_eq!(expand_with(&["x", "{4}"], cx("a\tb")), ["x", ""]);
    // A multi-character separator, and a regular expression.
    let multi = Regex::new("::").unwrap();
    let cx2 = Context {
        item: "a:b::c",
        colsep: Some(&multi),
        line: 1,
        slot: 1,
    };
    assert_eq!(expand_with(&["x", "{1}", "{2}"], cx2), ["x", "a:b", "c"]);
    let spaces = Regex::new(" +").unwrap();
    let cx3 = Context {
        item: "a   b c",
        colsep: Some(&spaces),
        line: 1,
        slot: 1,
    };
    assert_eq!(
        expand_with(&["x", "{3}", "{2}", "{1}"], cx3),
        ["x", "c", "b", "a"]
    );
    // Blanks at a column's ends are trimmed, as GNU parallel's --colsep
    // implies --trim rl; those inside stay. The whole item stays as it is.
    let comma = Regex::new(",").unwrap();
    let cx4 = |item| Context {
        item,
        colsep: Some(&comma),
        line: 1,
        slot: 1,
    };
    assert_eq!(
        expand_with(&["x", "{1}", "{2}", "{}"], cx4(" alice smith ,\t30 ")),
        ["x", "alice smith", "30", " alice smith ,\t30 "]
    );
    assert_eq!(
        expand_with(&["x"], cx4("a , b")),
        ["x", "a", "b"],
        "appended columns are trimmed too"
    );
    // A separator that matches no text (a word boundary) splits nothing.
    let boundary = Regex::new(r"\b").unwrap();
    let cx5 = Context {
        item: "a,b",
        colsep: Some(&boundary),
        line: 1,
        slot: 1,
    };
    assert_eq!(expand_with(&["x", "{1}", "{2}"], cx5), ["x", "a,b", ""]);
    // With no replacement string, each column is an argument.
    assert_eq!(
        expand_with(&["printf", "%s|%s"], cx("a b\tc")),
        ["printf", "%s|%s", "a b", "c"]
    );
    // Without --colsep the item is column 1.
    assert_eq!(
        expand_with(&["x", "{1}", "{2}"], cx3_plain()),
        ["x", "a b", ""]
    );
}

fn cx3_plain() -> Context<'static> {
    Context {
        item: "a b",
        colsep: None,
        line: 1,
        slot: 1,
    }
}

#[test]
fn unknown_patterns_are_left_alone() {
    for arg in [
        "{x}",
        "{",
        "}",
        "{ }",
        "{..}",
        "{0}",
        "{1x}",
        "{-}",
        "{#q}",
        "{=s/a/b/=}",
        "${HOME}",
        "{%2}",
        "{/..}",
        "{}}",
        "{{",
    ] {
        let template = [String::from("echo"), arg.to_string()];
        let expected_append = !Template::has_replacement(arg);
        let out = Template::parse(&template).expand(&cx("i"));
        if expected_append {
            assert_eq!(
                out,
                ["echo", arg, "i"],
                "{arg:?} is not a replacement string"
            );
        }
    }
    assert_eq!(
        expand_with(&["echo", "{x} {"], cx("i")),
        ["echo", "{x} {", "i"]
    );
    // A `{` that opens nothing does not swallow the one that does.
    assert_eq!(one("{{}}", "i"), "{i}");
    assert_eq!(one("{x{}}", "i"), "{xi}");
    assert_eq!(one("{}}", "i"), "i}");
    assert!(!Template::has_replacement("awk '{print $1}'"));
    assert_eq!(
        expand_with(&["awk", "{print $1}"], cx("f")),
        ["awk", "{print $1}", "f"]
    );
}

#[test]
fn uses_line_only_for_hash() {
    let t = |a: &[&str]| Template::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(t(&["echo", "n{#}"]).uses_line());
    assert!(t(&["echo", "{#q}"]).uses_line());
    assert!(!t(&["echo", "{}", "{%}", "{#x}"]).uses_line());
}

#[test]
fn quoting() {
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("plain"), "'plain'");
    assert_eq!(shell_quote("'"), r"''\'''");
    assert_eq!(shell_quote("a\nb"), "'a\nb'");
    assert_eq!(shell_word("a/b.c-d_e=f:1,2@%+"), "a/b.c-d_e=f:1,2@%+");
    assert_eq!(shell_word(""), "''");
    assert_eq!(shell_word("a b"), "'a b'");
    assert_eq!(shell_word("$x"), "'$x'");
    assert_eq!(shell_word("é"), "'é'");
    // Control characters and bidirectional overrides: `$'…'`, no raw byte.
    assert_eq!(shell_word("ev\u{1b}[31mil"), r"$'ev\x1b[31mil'");
    assert_eq!(shell_word("a\tb\n"), r"$'a\tb\n'");
    assert_eq!(shell_word("\u{7}1 it's \\"), r"$'\x071 it\'s \\'");
    // Beyond ASCII, the UTF-8 bytes: `\u` needs a UTF-8 locale to read back.
    assert_eq!(
        shell_word("x\u{9b}2J\u{202e}"),
        r"$'x\xc2\x9b2J\xe2\x80\xae'"
    );
}

/// Every word `shell_word` prints reads back in bash as the same bytes,
/// in a UTF-8 locale and in the C locale (cron's), and a printed word
/// holds no control character.
#[test]
fn shell_words_paste_back_into_bash() {
    if std::process::Command::new("bash")
        .arg("-c")
        .arg("true")
        .status()
        .is_err()
    {
        eprintln!("skipped: no bash");
        return;
    }
    let words = [
        "plain",
        "a b",
        "it's",
        "$(rm -rf x)",
        "ev\u{1b}[31mil",
        "bell\u{7}x",
        "\u{1}a",
        "new\nline\r\t",
        "back\\slash'\u{1b}",
        "del\u{7f}",
        "c1 \u{9b}2J é \u{202e}rtl",
        "",
    ];
    for word in words {
        let printed = shell_word(word);
        assert!(
            !printed.chars().any(crate::output::needs_escape),
            "{printed:?}"
        );
        for locale in ["C.UTF-8", "C"] {
            let out = std::process::Command::new("bash")
                .env("LC_ALL", locale)
                .arg("-c")
                .arg(format!("printf %s {printed}"))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                word,
                "bash read {printed} back differently in the {locale} locale"
            );
        }
    }
}

/// `-n` in a script (`sh -c '…'`): each shell word holding a replacement
/// string is repeated inside the script, not the whole script as an
/// argument (which would leave all but the first item as `$0`, `$1`).
#[test]
fn several_items_in_a_script_repeat_the_words_that_name_them() {
    assert_eq!(
        many(&["sh", "-c", "gzip -k {q} && rm {q}.bak"], &["a b", "c"]),
        ["sh", "-c", "gzip -k 'a b' 'c' && rm 'a b'.bak 'c'.bak"]
    );
    assert_eq!(
        many(
            &["sh", "-c", "for f in {q}; do echo \"$f\"; done"],
            &["x", "y"]
        ),
        ["sh", "-c", "for f in 'x' 'y'; do echo \"$f\"; done"]
    );
    // Whitespace kept as it was; words without an item's string once.
    assert_eq!(
        many(
            &["bash", "-c", "  echo s{%}\n\tn{#} {/}|wc -l "],
            &["d/a", "d/b"]
        ),
        ["bash", "-c", "  echo s2\n\tn7 n7 a b|wc -l "]
    );
    // A script's other arguments still repeat as arguments.
    assert_eq!(
        many(&["sh", "-c", "echo \"$@\"", "_", "{}"], &["a", "b"]),
        ["sh", "-c", "echo \"$@\"", "_", "a", "b"]
    );
    // Quoted words are words: whitespace and operators inside quotes do
    // not split them.
    assert_eq!(
        many(
            &["sh", "-c", r#"printf '[%s]\n' "got {}" 'x;y' got\ {}"#],
            &["a", "b"]
        ),
        [
            "sh",
            "-c",
            r#"printf '[%s]\n' "got a" "got b" 'x;y' got\ a got\ b"#
        ]
    );
    assert_eq!(
        many(
            &["sh", "-c", r#"cp {q} "/backup dir/{/q}.\"bak\"""#],
            &["d/a", "d/b"]
        ),
        [
            "sh",
            "-c",
            r#"cp 'd/a' 'd/b' "/backup dir/'a'.\"bak\"" "/backup dir/'b'.\"bak\"""#
        ]
    );
    // A comment is no word, an apostrophe in it no quote.
    assert_eq!(
        many(
            &["sh", "-c", "# don't touch\ngzip {q} # it's {q}\n"],
            &["a", "b"]
        ),
        ["sh", "-c", "# don't touch\ngzip 'a' 'b' # it's 'a' 'b'\n"]
    );
    // `$'…'`: a `\'` in it is no closing quote.
    assert_eq!(
        many(&["bash", "-c", r"echo $'it\'s {}' {}"], &["a", "b"]),
        ["bash", "-c", r"echo $'it\'s a' $'it\'s b' a b"]
    );
    // Quotes that never balance (a heredoc's text): split at whitespace.
    assert_eq!(
        many(&["sh", "-c", "cat <<EOF\nit's\nEOF\necho {}"], &["a", "b"]),
        ["sh", "-c", "cat <<EOF\nit's\nEOF\necho a b"]
    );
    // An escape before a value escapes nothing after it.
    assert_eq!(
        many(&["sh", "-c", r"echo \{} x"], &["a", "b"]),
        ["sh", "-c", r"echo \a \b x"]
    );
    // One item: as without -n.
    assert_eq!(
        many(&["sh", "-c", "echo {q};"], &["a"]),
        ["sh", "-c", "echo 'a';"]
    );
}

/// `-n`: several items in one command, as GNU parallel's `-X`.
fn many(template: &[&str], items: &[&str]) -> Vec<String> {
    let template: Vec<String> = template.iter().map(|s| s.to_string()).collect();
    let cxs: Vec<Context<'_>> = items.iter().map(|i| cx(i)).collect();
    Template::parse(&template).expand_many(&cxs)
}

#[test]
fn several_items_repeat_the_words_that_name_them() {
    assert_eq!(many(&["echo"], &["a", "b"]), ["echo", "a", "b"]);
    assert_eq!(
        many(&["mv", "{}", "dest"], &["a", "b", "c"]),
        ["mv", "a", "b", "c", "dest"]
    );
    assert_eq!(many(&["echo", "x{}y"], &["a", "b"]), ["echo", "xay", "xby"]);
    assert_eq!(
        many(&["echo", "{.}.o", "s{%}", "{#}"], &["a.c", "b.c"]),
        ["echo", "a.o", "b.o", "s2", "7", "7"]
    );
    assert_eq!(many(&["echo", "{}"], &["a"]), ["echo", "a"]);
    let colsep = regex::Regex::new(",").unwrap();
    let cxs = [
        Context {
            colsep: Some(&colsep),
            ..cx("a,1")
        },
        Context {
            colsep: Some(&colsep),
            ..cx("b,2")
        },
    ];
    let t = Template::parse(&["f".to_string(), "{1}={2}".to_string()]);
    assert_eq!(t.expand_many(&cxs), ["f", "a=1", "b=2"]);
    let t = Template::parse(&["f".to_string()]);
    assert_eq!(t.expand_many(&cxs), ["f", "a", "1", "b", "2"]);
}
