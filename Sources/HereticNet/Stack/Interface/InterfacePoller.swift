import HereticTransport
import HereticCore

/// Runs interfaces on a core: every turn of the core's loop polls each one with the core's
/// clock. Create it on the core, add interfaces, then `core.addPoller(poller)`.
public final class InterfacePoller: CorePoller {
    @exclusivity(unchecked) public private(set) var interfaces: [Interface] = []

    public init() {}

    /// Whether the interfaces know the core that polls them.
    var attached = false

    public func add(_ interface: Interface) {
        interfaces.append(interface)
        attached = false
    }

    public func poll(_ core: Core) -> Int {
        let now = core.nowMilliseconds
        var work = 0
        if !attached {
            for i in interfaces { i.core = core }
            attached = true
        }
        for i in interfaces { work += i.poll(now: now) }
        return work
    }
}
