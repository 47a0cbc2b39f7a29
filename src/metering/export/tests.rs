use super::*;

#[test]
fn backoff_grows_with_jitter_within_its_bounds() {
    let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
    for failures in 0..40 {
        for random in [0, 1, 12_345, u64::MAX / 3, u64::MAX] {
            let delay = backoff_delay(min, max, failures, random);
            assert!(
                delay >= min && delay <= max,
                "{failures} {random}: {delay:?}"
            );
        }
    }
    // The ceiling doubles: 400 ms, 800 ms, 1.6 s … each delay in its upper half.
    for (failures, ceiling) in [(0u32, 400u64), (1, 800), (2, 1600), (3, 3200)] {
        let low = backoff_delay(min, max, failures, 0);
        let high = backoff_delay(min, max, failures, u64::MAX - 1);
        assert_eq!(low, Duration::from_millis(ceiling / 2), "{failures}");
        assert!(
            high <= Duration::from_millis(ceiling) && high > low,
            "{failures}"
        );
    }
    // Far along, every delay is between max/2 and max.
    let late = backoff_delay(min, max, 30, 7);
    assert!(late >= max / 2 && late <= max);
    // Randomness spreads retries out.
    let mut backoff = Backoff::new(min, max);
    let delays: std::collections::HashSet<_> = (0..8)
        .map(|_| {
            backoff.reset();
            for _ in 0..5 {
                backoff.next_delay();
            }
            backoff.next_delay()
        })
        .collect();
    assert!(delays.len() > 1, "{delays:?}");
    assert_eq!(backoff.failures(), 6);
}

#[test]
fn cursors_are_stored_atomically_and_a_bad_one_restarts_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("cursors")).unwrap();
    let path = cursor_path(dir.path(), "openmeter");
    assert_eq!(load_cursor(&path), None);
    let cursor = Cursor {
        segment: 3,
        offset: 4096,
        seq: 77,
    };
    store_cursor(&path, &cursor).unwrap();
    assert_eq!(load_cursor(&path), Some(cursor));
    let names: Vec<_> = fs::read_dir(dir.path().join("cursors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["openmeter.json"], "no temporary file left behind");
    fs::write(&path, b"{\"segment\":3,").unwrap();
    assert_eq!(load_cursor(&path), None);
}
