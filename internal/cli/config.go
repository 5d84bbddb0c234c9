package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Config is the config file's content.
type Config struct {
	// URL is the server's URL.
	URL string `json:"url,omitempty"`
	// APIKey is the API key to send.
	APIKey string `json:"api_key,omitempty"`
	// Token is a session token from `wrenn login`, used when no API key is
	// given by flag or environment; it wins over APIKey until it expires.
	Token          string     `json:"token,omitempty"`
	TokenExpiresAt *time.Time `json:"token_expires_at,omitempty"`
}

// ConfigPath returns the config file's path: $WRENN_CONFIG, else
// $XDG_CONFIG_HOME/wrenn/config.json, else $HOME/.config/wrenn/config.json;
// "" when none of those variables is set.
func ConfigPath(getenv func(string) string) string {
	if p := getenv("WRENN_CONFIG"); p != "" {
		return p
	}
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "wrenn", "config.json")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "wrenn", "config.json")
	}
	return ""
}

// loadConfig reads the config file; a missing one is an empty Config.
func loadConfig(env Env) (Config, string, error) {
	path := ConfigPath(env.getenv)
	var cfg Config
	if path == "" {
		return cfg, "", nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, path, nil
	}
	if err != nil {
		return cfg, path, fmt.Errorf("read the config file: %w", err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, path, fmt.Errorf("config file %s is not valid JSON (%v); fix or delete it", path, err)
	}
	return cfg, path, nil
}

// saveConfig writes cfg to path atomically, readable only by its owner
// (it holds credentials).
func saveConfig(path string, cfg Config) error {
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create the config directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".config-*.json")
	if err != nil {
		return fmt.Errorf("write the config file: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write the config file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write the config file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write the config file: %w", err)
	}
	return nil
}
