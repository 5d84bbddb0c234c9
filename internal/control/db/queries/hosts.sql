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

-- ReportHost records what a host's agent reported in a heartbeat.
-- name: ReportHost :one
UPDATE hosts SET
    driver              = @driver,
    accelerator         = @accelerator,
    capacity_vcpus      = @capacity_vcpus,
    capacity_memory_mib = @capacity_memory_mib,
    vcpus_used          = @vcpus_used,
    memory_mib_used     = @memory_mib_used,
    sandboxes           = @sandboxes,
    state               = CASE WHEN state = 'draining' THEN state ELSE 'ready' END,
    last_heartbeat_at   = now()
WHERE id = @id
RETURNING *;

-- name: SetHostState :execrows
UPDATE hosts SET state = @state WHERE id = @id;

-- name: ListHosts :many
SELECT * FROM hosts ORDER BY id;

-- name: DeleteHost :execrows
DELETE FROM hosts WHERE id = @id;
