// Package pkgdoc holds one test: every Go package in the repository has a
// package doc comment, so `go doc` tells a newcomer what each one is for.
package pkgdoc

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestEveryPackageHasADocComment(t *testing.T) {
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..")
	documented := map[string]bool{}
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "node_modules", ".git", "testdata", "gen", "dbq":
				return filepath.SkipDir // generated or foreign code
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		key := filepath.Dir(path) + ":" + f.Name.Name
		if strings.HasSuffix(f.Name.Name, "_test") {
			return nil // external test packages document nothing
		}
		seen[key] = true
		if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
			documented[key] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) < 20 {
		t.Fatalf("found only %d packages under %s; the walk is not seeing the repository", len(seen), root)
	}
	for key := range seen {
		if !documented[key] {
			rel, _ := filepath.Rel(root, strings.SplitN(key, ":", 2)[0])
			t.Errorf("package %s (%s) has no package doc comment", strings.SplitN(key, ":", 2)[1], rel)
		}
	}
}
