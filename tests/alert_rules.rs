//! The alert rules: `deploy/prometheus/tributary-rules.yml` is valid for Prometheus
//! (`promtool check rules`), its unit tests pass (`promtool test rules`: every alert firing
//! and not, once with two daemons), and the PrometheusRule manifest carries the same groups.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `TRIBUTARY_PROMTOOL`, else `promtool` on PATH (scripts/install-deps.sh puts it in
/// /usr/local/bin).
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("TRIBUTARY_PROMTOOL") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("promtool"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found on PATH: run scripts/install-deps.sh as root (it extracts \
                 promtool from Debian's prometheus package), or set TRIBUTARY_PROMTOOL"
            )
        })
}

fn run_promtool(args: &[&str]) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = run_promtool(&["check", "rules", "tributary-rules.yml"]);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = run_promtool(&["test", "rules", "tributary-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_prometheusrule_manifest_carries_the_rules_file() {
    let read = |path: &str| std::fs::read_to_string(deploy().join(path)).unwrap();
    let rules = read("prometheus/tributary-rules.yml");
    let manifest = read("kubernetes/prometheusrule.yaml");
    let groups = &rules[rules.find("\ngroups:\n").expect("groups in the rules file") + 1..];
    let (_, spec) = manifest
        .split_once("\nspec:\n")
        .expect("spec in the manifest");
    let unindented: String = spec
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("  ").unwrap_or(line)))
        .collect();
    assert_eq!(
        unindented, groups,
        "deploy/kubernetes/prometheusrule.yaml's spec is not deploy/prometheus/tributary-rules.yml's \
         groups indented by two spaces"
    );
}
