package agentcmd

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/image"
)

// builder is what imageSource needs of *image.Builder.
type builder interface {
	Build(ctx context.Context, name string) (*image.Image, error)
}

// ImageSource is the agent's ImageSource over package image: the images
// it knows are the templates, built on first use (the builder's own cache
// makes that quick after the first time) and remembered while their files
// exist. Each image's template boots the uncompressed kernel, as both
// drivers can.
type ImageSource struct {
	b builder

	mu    sync.Mutex
	locks map[string]*sync.Mutex // one build at a time per image
	built map[string]*agent.Template
}

var _ agent.ImageSource = (*ImageSource)(nil)

// NewImageSource returns an ImageSource building with b.
func NewImageSource(b *image.Builder) *ImageSource { return newImageSource(b) }

func newImageSource(b builder) *ImageSource {
	return &ImageSource{b: b, locks: map[string]*sync.Mutex{}, built: map[string]*agent.Template{}}
}

// Names lists the images package image builds.
func (s *ImageSource) Names() []string { return image.Names() }

// Lookup returns the named image as a template, building it when needed.
// An unknown name is errdefs.ErrNotFound.
func (s *ImageSource) Lookup(ctx context.Context, name string) (*agent.Template, error) {
	if !slices.Contains(image.Names(), name) {
		return nil, errdefs.NotFound("no image %q (known: %s)", name, strings.Join(image.Names(), ", "))
	}
	s.mu.Lock()
	lock := s.locks[name]
	if lock == nil {
		lock = &sync.Mutex{}
		s.locks[name] = lock
	}
	s.mu.Unlock()
	lock.Lock()
	defer lock.Unlock()

	s.mu.Lock()
	t := s.built[name]
	s.mu.Unlock()
	if t != nil && exists(t.Kernel) && exists(t.RootFS) {
		c := *t
		return &c, nil
	}
	img, err := s.b.Build(ctx, name)
	if err != nil {
		return nil, err
	}
	t = templateOf(img)
	s.mu.Lock()
	s.built[name] = t
	s.mu.Unlock()
	c := *t
	return &c, nil
}

// templateOf describes an image as a template. Both drivers boot the
// uncompressed kernel when there is one: Firecracker needs it, and QEMU
// boots it faster (PVH entry, no decompression).
func templateOf(img *image.Image) *agent.Template {
	t := &agent.Template{
		Name:           img.Name,
		Kernel:         img.Kernel,
		Initrd:         img.Initrd,
		RootFS:         img.RootFS,
		KernelArgs:     img.KernelArgs,
		DefaultUser:    "user",
		DefaultWorkdir: "/home/user",
		Shell:          "/bin/sh",
	}
	if img.Vmlinux != "" {
		t.Kernel = img.Vmlinux
	}
	if img.Name == image.Base {
		t.Shell = "/bin/bash"
	}
	return t
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
