//! Scheduling rounds the owner runs (`defer_rounds`, as the service does), and the node view
//! rounds read (every `Rm::mutate` also checks that view against a fresh one).

use super::*;

#[test]
fn deferred_rounds_wait_for_the_owner_and_one_round_serves_every_change_before_it() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 16, 16_384, 0);
    let first = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    let mut second = start_job(&mut rm, &mut n1, shell_spec(2), 0);
    rm.cluster.defer_rounds();

    first.ask(&mut rm, 2, 10);
    second.ask(&mut rm, 3, 10);
    assert!(rm.cluster.round_due(), "the asks make a round due");
    assert!(
        rm.containers(first.app_id).len() == 1 && rm.containers(second.app_id).len() == 1,
        "only the AMs so far"
    );
    assert!(second.collect_news(&mut rm).is_none(), "nothing granted before the round");

    rm.mutate(|cluster| cluster.schedule(20));
    assert!(!rm.cluster.round_due());
    assert_eq!(rm.containers(first.app_id).len(), 1 + 2);
    assert_eq!(rm.containers(second.app_id).len(), 1 + 3);
    assert!(
        rm.woken.contains(&first.app_id) && rm.woken.contains(&second.app_id),
        "both long polls are woken"
    );
    let news = second.collect_news(&mut rm).expect("grants are news");
    assert_eq!(news.allocated.len(), 3);
    assert_eq!(
        news.headroom,
        Resources::new(16 - 2 - 5, 16_384 - 2 * 256 - 5 * 128),
        "headroom as of the round"
    );

    // A heartbeat that changes nothing does not make a round due.
    n1.heartbeat(&mut rm, 30);
    assert!(!rm.cluster.round_due());
}

#[test]
fn deferred_submissions_get_their_am_container_in_the_next_round() {
    let mut rm = cluster();
    rm.cluster.defer_rounds();
    register(&mut rm, "n1:8042", 4, 4096, 0);
    let app_id = rm.submit(shell_spec(1), 0).unwrap();
    assert!(rm.containers(app_id).is_empty());
    rm.mutate(|cluster| cluster.schedule(5));
    let containers = rm.containers(app_id);
    assert_eq!(containers.len(), 1);
    assert!(containers[0].is_am);
    assert_eq!(rm.launches.len(), 1, "the AM launch is in the round's outbox");
}

#[test]
fn a_round_sees_a_node_that_registers_again_larger() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 2, 4096, 0);
    let mut am = start_job(&mut rm, &mut n1, shell_spec(3), 0);
    am.ask(&mut rm, 3, 10);
    assert_eq!(
        am.collect_news(&mut rm).unwrap().allocated.len(),
        1,
        "one vcore was left beside the AM"
    );

    // The agent comes back with more vcores (its containers still run): the next round uses them.
    n1.capacity = Resources::new(8, 4096);
    n1.register(&mut rm, 20);
    am.ask(&mut rm, 2, 30);
    assert_eq!(am.collect_news(&mut rm).unwrap().allocated.len(), 2);
    assert_eq!(rm.node("n1:8042").used, Resources::new(4, 256 + 3 * 128));
}

#[test]
fn a_round_skips_an_unhealthy_node_and_uses_it_again_once_healthy() {
    let mut rm = cluster();
    let mut n1 = register(&mut rm, "n1:8042", 4, 4096, 0);
    n1.healthy = false;
    n1.heartbeat(&mut rm, 10);
    let app_id = rm.submit(shell_spec(1), 20).unwrap();
    assert!(rm.containers(app_id).is_empty(), "an unhealthy node takes nothing");

    n1.healthy = true;
    n1.heartbeat(&mut rm, 30);
    assert_eq!(rm.containers(app_id).len(), 1);
}
