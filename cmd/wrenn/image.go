package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"wrenn.dev/wrenn/internal/image"
)

func runImage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "build" {
		return usageError{"usage: wrenn image build [-cache-dir DIR] [-envd PATH] [-json] [minimal|base ...]"}
	}
	fs := newFlagSet("image build", stderr)
	cacheDir := fs.String("cache-dir", image.DefaultCacheDir(), "where kernels and images are kept")
	envdBin := fs.String("envd", "bin/envd", "the static envd binary to put into images (make build makes it)")
	asJSON := fs.Bool("json", false, "print the built images as JSON")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	names := fs.Args()
	if len(names) == 0 {
		names = []string{image.Minimal}
	}
	for _, n := range names {
		if !slices.Contains(image.Names(), n) {
			return usageError{fmt.Sprintf("unknown image %q; known images: %s", n, strings.Join(image.Names(), ", "))}
		}
	}
	b := &image.Builder{
		CacheDir:   *cacheDir,
		EnvdBinary: *envdBin,
		Progress:   stderr,
		Logger:     newLogger(stderr, slog.LevelWarn),
	}
	var built []*image.Image
	for _, n := range names {
		img, err := b.Build(ctx, n)
		if err != nil {
			return fmt.Errorf("build image %s: %w", n, err)
		}
		built = append(built, img)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(built)
	}
	for _, img := range built {
		fmt.Fprintf(stdout, "%s\t%s\trootfs=%s kernel=%s\n", img.Name, img.Hash[:12], img.RootFS, img.Kernel)
	}
	return nil
}
