//! The command line against itself: every argument has help, and every command that
//! operator advice in `src/` names is one the CLI takes.

use std::path::Path;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser as _};

use super::Args;

/// `path: problem` for each subcommand without an about text and each argument without
/// help, below `command` (whose path is `path`).
fn missing_help(command: &clap::Command, path: &str, problems: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_help().is_none() && !matches!(id, "help" | "version") {
            problems.push(format!("{path}: argument {id} has no help text"));
        }
    }
    for sub in command.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().is_none() {
            problems.push(format!("{sub_path}: subcommand has no help text"));
        }
        missing_help(sub, &sub_path, problems);
    }
}

#[test]
fn every_argument_and_subcommand_has_help() {
    let mut problems = Vec::new();
    missing_help(&Args::command(), "tributary", &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every long flag of every command, `--help` and `--version` included.
fn long_flags(command: &clap::Command, flags: &mut Vec<String>) {
    flags.extend(
        command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(str::to_owned),
    );
    for sub in command.get_subcommands() {
        long_flags(sub, flags);
    }
}

/// The string literals of Rust source `text`, each with its line continuations (`\` at the
/// end of a line and the next line's indentation) removed. Comments are skipped; escapes
/// other than continuations are left as they are.
fn string_literals(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            // A char literal ('"', '\'', '\n'), not a lifetime.
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            'r' if chars.get(i + 1) == Some(&'#') && chars.get(i + 2) == Some(&'"') => {
                let start = i + 3;
                i = start;
                while i + 1 < chars.len() && !(chars[i] == '"' && chars[i + 1] == '#') {
                    i += 1;
                }
                literals.push(chars[start..i].iter().collect());
                i += 2;
            }
            '"' => {
                let mut literal = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && chars.get(i + 1) == Some(&'\n') {
                        i += 2;
                        while i < chars.len() && chars[i].is_whitespace() {
                            i += 1;
                        }
                        continue;
                    }
                    if chars[i] == '\\' {
                        literal.push(chars[i]);
                        i += 1;
                    }
                    if let Some(&c) = chars.get(i) {
                        literal.push(c);
                    }
                    i += 1;
                }
                literals.push(literal);
                i += 1;
            }
            _ => i += 1,
        }
    }
    literals
}

/// The `tributary <subcommand> …` commands in `literal`, as written: each ends at a
/// backtick, a closing parenthesis, a semicolon or the end of the literal.
fn commands(literal: &str) -> Vec<String> {
    let cli = Args::command();
    let subcommands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
    let mut found = Vec::new();
    let mut rest = literal;
    while let Some(at) = rest.find("tributary ") {
        let after = &rest[at + "tributary ".len()..];
        let end = after.find(['`', ')', ';', '\n']).unwrap_or(after.len());
        let command = after[..end].trim_end_matches(['.', ',', ' ']);
        let first = command.split_whitespace().next().unwrap_or_default();
        if subcommands.contains(&first) {
            found.push(command.to_owned());
        }
        rest = after;
    }
    found
}

/// `command`'s words as a shell would split them, with placeholders (`<name>`, `<source
/// URL>`, `{}`, `{name}`) as a value, and single quotes removed.
fn words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_placeholder = None;
    let mut quoted = false;
    for c in command.chars() {
        match (in_placeholder, c) {
            (None, '<') => in_placeholder = Some('>'),
            (None, '{') => in_placeholder = Some('}'),
            (Some(close), c) if c == close => {
                in_placeholder = None;
                word.push('x');
            }
            (Some(_), _) => {}
            (None, '\'') => quoted = !quoted,
            (None, c) if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The long flags `literal` names (`--name`, `--format=json`), without their dashes.
fn flags_named(literal: &str) -> Vec<&str> {
    literal
        .split(|c: char| c.is_whitespace() || matches!(c, '`' | '(' | ')' | ',' | '.'))
        .filter_map(|w| w.strip_prefix("--"))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
        .map(|w| w.split('=').next().unwrap_or_default())
        .collect()
}

/// Where `commands` and the flags check look: every `.rs` file under `dir`.
fn sources(dir: &Path, files: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((path.display().to_string(), text));
        }
    }
}

/// Whether the command line `words` is wrong, not merely short of arguments: advice may
/// name a command without the arguments it needs ("`tributary connector preflight` shows
/// them all").
fn refused(words: &[String]) -> Option<clap::Error> {
    let argv = std::iter::once("tributary".to_owned()).chain(words.iter().cloned());
    match Args::try_parse_from(argv) {
        Ok(_) => None,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    | ErrorKind::MissingSubcommand
            ) =>
        {
            None
        }
        Err(e) => Some(e),
    }
}

/// Every `tributary …` command that a string of `src/` names parses, and every `--flag`
/// named beside one is a flag of the CLI: the next steps errors give are ones an operator
/// can run.
#[test]
fn every_command_in_operator_advice_is_one_the_cli_takes() {
    let mut flags = Vec::new();
    long_flags(&Args::command(), &mut flags);
    flags.extend(["help".to_owned(), "version".to_owned()]);
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    // This file's own examples of wrong advice are not advice.
    let this = Path::new(file!());
    for (path, text) in files
        .iter()
        .filter(|(path, _)| !path.ends_with(this.to_str().unwrap()))
    {
        for literal in string_literals(text) {
            if !literal.contains("tributary ") {
                continue;
            }
            for flag in flags_named(&literal) {
                if !flags.iter().any(|f| f == flag) {
                    problems.push(format!("{path}: no flag --{flag}: {literal:?}"));
                }
            }
            for command in commands(&literal) {
                checked += 1;
                if let Some(e) = refused(&words(&command)) {
                    let e = e.to_string();
                    let first = e.lines().next().unwrap_or_default();
                    problems.push(format!("{path}: `tributary {command}`: {first}"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} commands found: is the scan broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scan_finds_what_it_checks() {
    let text = "let a = \"run `tributary connector retry-setup {name}` (its --decisions \\\n    \
                can exclude it)\"; // `tributary nope`\nlet c = '\"'; let b = \"x\";";
    let literals = string_literals(text);
    assert_eq!(
        literals,
        [
            "run `tributary connector retry-setup {name}` (its --decisions can exclude it)",
            "x"
        ]
    );
    assert_eq!(commands(&literals[0]), ["connector retry-setup {name}"]);
    // The flag beside the command is checked too: the CLI has no --decisions.
    assert_eq!(flags_named(&literals[0]), ["decisions"]);
    let mut flags = Vec::new();
    long_flags(&Args::command(), &mut flags);
    assert!(!flags.iter().any(|f| f == "decisions"));
    assert!(flags.iter().any(|f| f == "replica-identity-decisions"));
    assert_eq!(
        words("connector create postgresql '<url>' --name {}"),
        ["connector", "create", "postgresql", "x", "--name", "x"]
    );
    assert!(refused(&words("connector retry-setup x --decisions f")).is_some());
    assert!(refused(&words("connector retry-setup x --resnapshot")).is_none());
    assert!(
        refused(&words("connector preflight")).is_none(),
        "short of arguments"
    );
}
