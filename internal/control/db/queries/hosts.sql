-- UpsertHost registers a host or updates what it reports about itself;
-- either way it counts as a heartbeat.
-- name: UpsertHost :one
INSERT INTO hosts (id, address, driver, accelerator, capacity_vcpus, capacity_memory_mib, state, last_heartbeat_at)
VALUES (@id, @address, @driver, @accelerator, @capacity_vcpus, @capacity_memory_mib, @state, now())
ON CONFLICT (id) DO UPDATE SET
    address             = excluded.address,
    driver              = excluded.driver,
    accelerator         = excluded.accelerator,
    capacity_vcpus      = excluded.capacity_vcpus,
    capacity_memory_mib = excluded.capacity_memory_mib,
    state               = excluded.state,
    last_heartbeat_at   = now()
RETURNING *;

-- name: HeartbeatHost :one
UPDATE hosts SET last_heartbeat_at = now()
WHERE id = @id
RETURNING last_heartbeat_at;

-- name: GetHost :one
SELECT * FROM hosts WHERE id = @id;
