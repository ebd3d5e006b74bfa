//! What the README promises a newcomer: `spindle demo` runs a shell job, a word count and a
//! streaming job on a throwaway cluster.

mod support;

use std::time::Duration;

#[tokio::test]
async fn demo_runs() {
    let home = support::shared_tempdir("spindle-test-");
    // Its temporary dirs in a dir of its own, to see that it leaves none behind.
    let tmp = home.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let output = support::run_spindle_with_env(home.path(), &["demo"], &[("TMPDIR", &tmp)], Duration::from_secs(90)).await;
    assert!(output.success(), "{output}");
    assert!(output.stdout.contains("hello from"), "{output}");
    assert!(output.stdout.contains("The most frequent words"), "{output}");
    // "the" is twice in each of the four sentences, written 5,000 × (1, 2, 3, 4) times.
    assert!(output.stdout.contains("the          100000"), "{output}");
    // The streaming job beside them: rescaled live, every generated event counted exactly once.
    assert!(output.stdout.contains("rescaled `count` 2 → 3 live"), "{output}");
    assert!(output.stdout.contains("counting 120000 events exactly once"), "{output}");
    assert!(!home.path().join("config.toml").exists(), "the demo leaves the user's config alone");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert!(
        left.is_empty(),
        "the demo removes its data, jobs and containers' dirs: {left:?} are left"
    );
}
