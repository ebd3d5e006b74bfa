//! Test hosts made with network namespaces: a bridge in the test's own namespace and, per
//! host, a namespace joined to it by a veth pair, each with an address of its own. Daemons run
//! in a host with `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
//! cgroup tree agents need). The file system is shared, unless a daemon is started on a
//! private host (`Daemon::spawn_in_private_host`). Everything is removed on drop.

use std::process::Command;

/// A few hosts on one /24 subnet, reachable from the test's namespace over the bridge.
pub struct NetnsHosts {
    bridge: String,
    names: Vec<String>,
    /// The subnet's first three octets, e.g. `10.88.7`.
    subnet: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|err| format!("ip: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl NetnsHosts {
    /// `count` hosts, `10.88.N.1` …, the bridge at `10.88.N.254`; `N` and the names come
    /// from this process's id and a count, so tests running at once do not collide. `Err` where
    /// namespaces cannot be made (not root).
    pub fn create(count: usize) -> Result<NetnsHosts, String> {
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let created = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() * 7 + created) % 200 + 20;
        let mut hosts = NetnsHosts {
            bridge: format!("spbr{tag}"),
            names: Vec::new(),
            subnet: format!("10.88.{tag}"),
        };
        // Left over by an earlier process with the same id: start clean.
        hosts.remove_leftovers(count);
        ip(&["link", "add", &hosts.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.254/24", hosts.subnet), "dev", &hosts.bridge])?;
        ip(&["link", "set", &hosts.bridge, "up"])?;
        for index in 1..=count {
            let name = format!("sp{tag}h{index}");
            let (outside, inside) = (format!("sp{tag}v{index}"), format!("sp{tag}i{index}"));
            ip(&["netns", "add", &name])?;
            hosts.names.push(name.clone());
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &outside, "master", &hosts.bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["link", "set", &inside, "netns", &name])?;
            let address = format!("{}/24", hosts.address(index - 1));
            ip(&["-n", &name, "addr", "add", &address, "dev", &inside])?;
            ip(&["-n", &name, "link", "set", &inside, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Host `index`'s address (0 is the first host).
    pub fn address(&self, index: usize) -> String {
        format!("{}.{}", self.subnet, index + 1)
    }

    /// The test's own namespace on the bridge: a server listening here is reachable from
    /// every host.
    pub fn bridge_address(&self) -> String {
        format!("{}.254", self.subnet)
    }

    /// Host `index`'s namespace name, for `Daemon::spawn_in_netns`.
    /// How many hosts there are.
    pub fn count(&self) -> usize {
        self.names.len()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// Cuts host `index` off the network (its link on the bridge goes down).
    pub fn partition(&self, index: usize) {
        ip(&["link", "set", &self.outside_link(index), "down"]).expect("cut the host off");
    }

    /// Joins host `index` to the network again.
    pub fn heal(&self, index: usize) {
        ip(&["link", "set", &self.outside_link(index), "up"]).expect("join the host again");
    }

    fn outside_link(&self, index: usize) -> String {
        format!("sp{}v{}", &self.bridge["spbr".len()..], index + 1)
    }

    fn remove_leftovers(&self, count: usize) {
        let tag = &self.bridge["spbr".len()..];
        for index in 1..=count + 4 {
            let _ = ip(&["netns", "del", &format!("sp{tag}h{index}")]);
            let _ = ip(&["link", "del", &format!("sp{tag}v{index}")]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
        // Deleting a namespace deletes its veth ends, and their peers with them.
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
