import HereticCore

/// Runs interfaces on a core: every turn of the core's loop polls each one with the core's
/// clock. Create it on the core, add interfaces, then `core.addPoller(poller)`.
public final class InterfacePoller: CorePoller {
    @exclusivity(unchecked) public private(set) var interfaces: [Interface] = []

    public init() {}

    public func add(_ interface: Interface) { interfaces.append(interface) }

    public func poll(_ core: Core) -> Int {
        let now = core.nowMilliseconds
        var work = 0
        for i in interfaces {
            if i.core !== core { i.core = core }
            work += i.poll(now: now)
        }
        return work
    }
}
