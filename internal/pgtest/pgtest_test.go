package pgtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"wrenn.dev/wrenn/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Tests running side by side each see only their own tables.
func TestSchemasAreIsolated(t *testing.T) {
	for _, name := range []string{"A", "B", "C", "D"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := pgtest.New(t)
			ctx := t.Context()
			team, err := d.CreateTeam(ctx, "team-"+name)
			if err != nil {
				t.Fatalf("CreateTeam: %v", err)
			}
			conn, err := pgx.Connect(ctx, pgtest.URL(t))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			// pgtest.URL made a second, empty schema: the team is not there.
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("a fresh schema has %d tables", n)
			}
			_ = team
		})
	}
}

func TestSchemaDroppedAtCleanup(t *testing.T) {
	var u string
	t.Run("inner", func(t *testing.T) { u = pgtest.URL(t) })
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var schema *string
	if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if schema != nil {
		t.Errorf("schema %s still exists after the test ended", *schema)
	}
}
