//! `vhost-kernel-test report` as CI uses it: the binary writes JUnit XML
//! and JSON for sample KTAP files (a real `run --fake-device` output, a
//! `--fail-fast` run with a kernel report, a soak cut short by a kernel
//! crash), and both are read back with parsers of their own (roxmltree for
//! the XML, checked against the structure the JUnit schema requires;
//! serde_json for the summary), never with the writer's types.

use std::path::{Path, PathBuf};
use std::process::Command;

use roxmltree::{Document, Node};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vkt-report-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `report` with `args`: (exit status, stdout, stderr).
fn report(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-kernel-test")).arg("report").args(args).output().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr))
}

/// Write JUnit and JSON for `input` (plus `extra` arguments); read both back.
fn junit_and_json(test: &str, input: &Path, extra: &[&str]) -> (String, serde_json::Value) {
    let dir = scratch(test);
    let (xml, json) = (dir.join("junit.xml"), dir.join("summary.json"));
    let mut args = vec![input.as_os_str(), "--junit".as_ref(), xml.as_os_str(), "--json".as_ref(), json.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let (code, stdout, stderr) = report(&args);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(&format!("wrote JUnit XML to {}", xml.display())), "{stdout}");
    let x = std::fs::read_to_string(&xml).unwrap();
    let j = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (x, j)
}

fn attr<'a>(n: Node<'a, '_>, name: &str) -> &'a str {
    n.attribute(name).unwrap_or_else(|| panic!("<{}> without the required attribute {name}", n.tag_name().name()))
}

fn count(n: Node, name: &str) -> usize {
    attr(n, name).parse().unwrap_or_else(|e| panic!("{name}={:?}: {e}", attr(n, name)))
}

fn seconds(n: Node) -> f64 {
    let t: f64 = attr(n, "time").parse().unwrap();
    assert!(t >= 0.0, "negative time on <{}>", n.tag_name().name());
    t
}

fn elements<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// One test case as read back: (suite, name, classname, time, outcome
/// element name or "pass", its message, type and text, system-out).
#[derive(Debug, Clone)]
struct Case {
    suite: String,
    name: String,
    classname: String,
    time: f64,
    outcome: String,
    message: Option<String>,
    ty: Option<String>,
    text: String,
    out: String,
}

/// Check the structure the JUnit schema requires and that every count
/// agrees with the cases; return the cases in document order.
fn read_junit(xml: &str) -> Vec<Case> {
    let doc = Document::parse(xml).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let mut cases = Vec::new();
    let (mut tests, mut failures, mut errors, mut skipped) = (0, 0, 0, 0);
    for suite in root.children().filter(|c| c.is_element()) {
        assert_eq!(suite.tag_name().name(), "testsuite", "only <testsuite> under <testsuites>");
        let name = attr(suite, "name").to_string();
        seconds(suite);
        let mut counted = [0usize; 4];
        for case in suite.children().filter(|c| c.is_element()) {
            match case.tag_name().name() {
                "testcase" => {}
                "system-out" | "system-err" | "properties" => continue,
                other => panic!("<{other}> in <testsuite>"),
            }
            let outcomes: Vec<Node> = case
                .children()
                .filter(|c| c.is_element() && ["failure", "error", "skipped"].contains(&c.tag_name().name()))
                .collect();
            assert!(outcomes.len() <= 1, "a case with more than one outcome: {:?}", attr(case, "name"));
            let o = outcomes.first();
            let outcome = o.map_or("pass", |o| o.tag_name().name());
            counted[0] += 1;
            match outcome {
                "failure" => counted[1] += 1,
                "error" => counted[2] += 1,
                "skipped" => counted[3] += 1,
                _ => {}
            }
            let out = elements(case, "system-out").next().and_then(|n| n.text()).unwrap_or("").to_string();
            cases.push(Case {
                suite: name.clone(),
                name: attr(case, "name").to_string(),
                classname: attr(case, "classname").to_string(),
                time: seconds(case),
                outcome: outcome.to_string(),
                message: o.and_then(|o| o.attribute("message")).map(str::to_string),
                ty: o.and_then(|o| o.attribute("type")).map(str::to_string),
                text: o.and_then(|o| o.text()).unwrap_or("").to_string(),
                out,
            });
        }
        let declared =
            [count(suite, "tests"), count(suite, "failures"), count(suite, "errors"), count(suite, "skipped")];
        assert_eq!(declared, counted, "counts of <testsuite name={name:?}> (tests, failures, errors, skipped)");
        tests += counted[0];
        failures += counted[1];
        errors += counted[2];
        skipped += counted[3];
    }
    let declared = [count(root, "tests"), count(root, "failures"), count(root, "errors"), count(root, "skipped")];
    assert_eq!(declared, [tests, failures, errors, skipped], "counts of <testsuites>");
    cases
}

/// The `ok N name [# SKIP reason]` lines of a one-pass KTAP file.
fn ktap_results(text: &str) -> Vec<(String, Option<String>, bool)> {
    text.lines()
        .filter_map(|l| {
            let (ok, rest) = match (l.strip_prefix("ok "), l.strip_prefix("not ok ")) {
                (Some(r), _) => (true, r),
                (_, Some(r)) => (false, r),
                _ => return None,
            };
            let rest = rest.split_once(' ').unwrap().1;
            let (name, skip) = match rest.split_once(" # SKIP ") {
                Some((n, s)) => (n, Some(s.to_string())),
                None => (rest, None),
            };
            Some((name.to_string(), skip, ok))
        })
        .collect()
}

/// The JUnit of a one-pass KTAP file has its results, case for case.
fn same_cases(input: &Path, cases: &[Case]) {
    let want = ktap_results(&std::fs::read_to_string(input).unwrap());
    assert_eq!(cases.len(), want.len());
    for (c, (name, skip, ok)) in cases.iter().zip(&want) {
        assert_eq!(&c.name, name);
        assert_eq!((c.suite.as_str(), c.classname.as_str()), ("vhost-kernel-test", "vhost-kernel-test"));
        match skip {
            Some(reason) => assert_eq!((c.outcome.as_str(), c.message.as_ref()), ("skipped", Some(reason)), "{name}"),
            None => assert_eq!(c.outcome, if *ok { "pass" } else { "failure" }, "{name}"),
        }
    }
}

/// results.log of a real `scripts/vmtest --log-dir` run on the patched kernel.
#[test]
fn a_real_vmtest_log_reads_back_case_for_case() {
    let input = data("vmtest-results.log");
    let (xml, json) = junit_and_json("vmtest", &input, &[]);
    let cases = read_junit(&xml);
    same_cases(&input, &cases);
    let loop_ = cases.iter().find(|c| c.name == "attach_close_loop").unwrap();
    assert!(loop_.time > 1.0, "{loop_:?}");
    assert_eq!(json["exit_status"], 0);
    assert_eq!((json["totals"]["planned"].as_u64(), json["complete"].as_bool()), (Some(47), Some(true)));
}

/// The same log cut where the guest would have died during point 26, as
/// the host sees it after a panic: the point is a crash, 21 are missing.
#[test]
fn a_real_vmtest_log_cut_by_a_panic() {
    let dir = scratch("vmtest-cut");
    let full = std::fs::read_to_string(data("vmtest-results.log")).unwrap();
    let cut: String = full.lines().take_while(|l| !l.starts_with("ok 26 ")).map(|l| format!("{l}\n")).collect();
    let name = full.lines().find_map(|l| l.strip_prefix("ok 26 ")).unwrap().to_string();
    let input = dir.join("results.log");
    std::fs::write(&input, cut).unwrap();
    let crash = data("crash-teardown_exit.txt");
    let args = ["--crash", crash.to_str().unwrap(), "--crash-point", &name];
    let (xml, json) = junit_and_json("vmtest-cut-out", &input, &args);
    let cases = read_junit(&xml);
    assert_eq!(cases.len(), 26);
    let died = cases.last().unwrap();
    assert_eq!((died.name.as_str(), died.ty.as_deref()), (name.as_str(), Some("kernel crash")));
    assert!(died.text.contains("Kernel panic - not syncing"), "{died:?}");
    let t = &json["totals"];
    assert_eq!((t["crash"].as_u64(), t["missing"].as_u64()), (Some(1), Some(21)));
    assert_eq!(json["exit_status"], serde_json::Value::Null);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_real_fake_device_run_reads_back_case_for_case() {
    let input = data("run-fake-device.ktap");
    let (xml, json) = junit_and_json("fake", &input, &[]);
    let cases = read_junit(&xml);
    same_cases(&input, &cases);
    // Durations come from the `# NAME: S s` lines.
    let exit = cases.iter().find(|c| c.name == "teardown_exit_fake_device").unwrap();
    assert!(exit.time > 0.0, "{exit:?}");
    assert!(exit.out.contains("h2g -> g2h: 10 transmitted"), "{exit:?}");
    assert_eq!(json["totals"]["planned"], 47);
    assert_eq!(json["totals"]["missing"], 0);
    assert_eq!(json["complete"], true);
    assert_eq!(json["points"].as_array().unwrap().len(), 47);
    assert_eq!(json["exit_status"], serde_json::Value::Null);
}

#[test]
fn a_kernel_report_is_the_failure_text() {
    let (xml, json) = junit_and_json("fail-fast", &data("results-fail-fast.log"), &[]);
    let cases = read_junit(&xml);
    let failed = cases.iter().find(|c| c.name == "teardown_exit").unwrap();
    assert_eq!((failed.outcome.as_str(), failed.ty.as_deref()), ("failure", Some("kernel report")));
    assert!(failed.text.contains("WARNING: CPU: 1 PID: 212 at drivers/vhost/net.c:1402"), "{failed:?}");
    assert!(failed.text.contains(" <TASK>"), "{failed:?}");
    assert!(failed.message.as_deref().unwrap().starts_with("kernel reported a problem during teardown_exit"));
    assert!((failed.time - 0.846).abs() < 1e-9, "{failed:?}");
    let stopped = cases.iter().find(|c| c.name == "teardown_unbind").unwrap();
    assert_eq!(stopped.message.as_deref(), Some("not run: stopped after a kernel report"));
    assert_eq!(json["exit_status"], 1);
    let p = &json["points"][1];
    assert_eq!(p["result"], "fail");
    assert_eq!(
        p["kernel_report"][1],
        "WARNING: CPU: 1 PID: 212 at drivers/vhost/net.c:1402 vhost_net_kernel_release+0x1f/0x90"
    );
    assert_eq!(json["points"][0]["kernel_report"], serde_json::Value::Null);
}

#[test]
fn a_crash_in_a_soak_is_a_kernel_crash_failure() {
    let crash = data("crash-teardown_exit.txt");
    let crash = crash.to_str().unwrap();
    let (xml, json) =
        junit_and_json("crash", &data("results-soak-crash.log"), &["--crash", crash, "--crash-point", "teardown_exit"]);
    let cases = read_junit(&xml);
    let suites: Vec<&str> = cases.iter().map(|c| c.suite.as_str()).collect();
    assert_eq!(suites.iter().filter(|s| **s == "vhost-kernel-test.iteration-1").count(), 4);
    assert_eq!(suites.iter().filter(|s| **s == "vhost-kernel-test.iteration-2").count(), 2);
    let first = &cases[1];
    assert_eq!(
        (first.name.as_str(), first.outcome.as_str(), first.ty.as_deref()),
        ("teardown_exit", "failure", Some("failure"))
    );
    assert!(first.text.contains("got 5 of 20 verified replies"), "{first:?}");
    let died = cases.last().unwrap();
    assert_eq!(
        (died.suite.as_str(), died.name.as_str(), died.outcome.as_str(), died.ty.as_deref()),
        ("vhost-kernel-test.iteration-2", "teardown_exit", "failure", Some("kernel crash"))
    );
    assert!(died.text.contains("RIP: 0010:vhost_net_kernel_release+0x2b/0x90"), "{died:?}");
    assert!(died.out.contains("serve: h2g=vhostkernel0 g2h=eth0"), "what it printed before dying: {died:?}");
    // The points after it were never run and are not invented.
    let t = &json["totals"];
    assert_eq!(
        (t["crash"].as_u64(), t["missing"].as_u64(), t["missing_iterations"].as_u64()),
        (Some(1), Some(2), Some(1))
    );
    assert_eq!(json["iterations"][1]["result"], "crash");
    let last = json["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["result"].as_str(), last["iteration"].as_u64(), last["number"].as_u64()),
        (Some("crash"), Some(2), Some(2))
    );
    assert_eq!(last["kernel_report"][0], "BUG: kernel NULL pointer dereference, address: 0000000000000008");
    assert_eq!(json["exit_status"], serde_json::Value::Null);
}

#[test]
fn a_cut_run_without_a_crash_report_is_not_green() {
    let (xml, json) = junit_and_json("cut", &data("results-soak-crash.log"), &[]);
    let cases = read_junit(&xml);
    let last = cases.last().unwrap();
    assert_eq!((last.name.as_str(), last.outcome.as_str()), ("results_incomplete", "error"));
    assert_eq!(json["complete"], false);
}

#[test]
fn unreadable_or_non_ktap_input_exits_2_naming_file_and_line() {
    let dir = scratch("bad");
    let bad = dir.join("results.log");
    std::fs::write(&bad, "KTAP version 1\n1..1\nsegfault in init\n").unwrap();
    let xml = dir.join("junit.xml");
    let (code, _, stderr) = report(&[bad.as_os_str(), "--junit".as_ref(), xml.as_os_str()]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("{}:3: not a KTAP line", bad.display())), "{stderr}");
    assert!(!xml.exists());
    let missing = dir.join("none.log");
    let (code, _, stderr) = report(&[missing.as_os_str()]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("read {}", missing.display())), "{stderr}");
    let ok = data("results-fail-fast.log");
    let (code, _, stderr) = report(&[ok.as_os_str(), "--crash".as_ref(), missing.as_os_str()]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("read crash report {}", missing.display())), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
