package deploy

// Tests of scripts/install-pjrt-plugin.sh, the extraction step of the container image:
// each builds fake wheels (zip files with a RECORD, as pip writes them) in a temporary
// directory and runs the script with bash.

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var installScript = filepath.Join("..", "..", "scripts", "install-pjrt-plugin.sh")

// fakeSO is bytes that pass the script's checks for a PJRT plugin: ELF magic and the
// GetPjrtApi symbol name.
func fakeSO(tag string) []byte {
	return []byte("\x7fELF\x02\x01\x01\x00" + strings.Repeat("\x00", 56) + "GetPjrtApi\x00" + tag)
}

// wheel describes a fake wheel: members and their bytes, and RECORD hashes to corrupt.
type wheel struct {
	dist    string // e.g. libtpu-0.0.99
	files   map[string][]byte
	corrupt map[string]bool // members whose RECORD hash is wrong
	record  bool            // write a RECORD (default true through newWheel)
}

func recordHash(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256=" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// write builds the wheel zip in dir and returns its path.
func (w wheel) write(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, w.dist+"-py3-none-manylinux_2_31_x86_64.whl")
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	var rec strings.Builder
	for name, data := range w.files {
		f, err := z.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(data)
		h := recordHash(data)
		if w.corrupt[name] {
			h = recordHash(append([]byte("tampered"), data...))
		}
		fmt.Fprintf(&rec, "%s,%s,%d\n", name, h, len(data))
	}
	if w.record {
		recName := w.dist + ".dist-info/RECORD"
		fmt.Fprintf(&rec, "%s,,\n", recName)
		f, _ := z.Create(recName)
		f.Write([]byte(rec.String()))
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func newWheel(dist string, files map[string][]byte) wheel {
	return wheel{dist: dist, files: files, record: true}
}

// extractors are the zip readers the script can use that this machine has.
func extractors(t *testing.T) []string {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	var xs []string
	for _, x := range []string{"python3", "unzip"} {
		if _, err := exec.LookPath(x); err == nil {
			xs = append(xs, x)
		}
	}
	if len(xs) == 0 {
		t.Skip("neither python3 nor unzip is installed")
	}
	return xs
}

func runInstall(t *testing.T, extractor string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{installScript}, args...)...)
	cmd.Env = append(os.Environ(), "PJRT_UNZIP="+extractor)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestInstallPJRTPluginFromWheel(t *testing.T) {
	tpuSO, cudaSO := fakeSO("tpu"), fakeSO("cuda")
	tests := []struct {
		name    string
		wheel   wheel
		extra   []string
		wantOut string // path under dest
		want    []byte
		wantErr string
	}{
		{"libtpu", newWheel("libtpu-0.0.99", map[string][]byte{
			"libtpu/__init__.py": []byte("# empty\n"), "libtpu/libtpu.so": tpuSO,
		}), nil, "pjrt_c_api_tpu_plugin.so", tpuSO, ""},
		{"jax cuda pjrt", newWheel("jax_cuda13_pjrt-0.11.2", map[string][]byte{
			"jax_plugins/xla_cuda13/__init__.py": []byte(""), "jax_plugins/xla_cuda13/xla_cuda_plugin.so": cudaSO,
		}), nil, "nvidia/pjrt_c_api_cuda_plugin.so", cudaSO, ""},
		{"renamed", newWheel("libtpu-0.0.99", map[string][]byte{"libtpu/libtpu.so": tpuSO}),
			[]string{"--name", "tpu_v5e"}, "pjrt_c_api_tpu_v5e_plugin.so", tpuSO, ""},
		{"tampered", wheel{dist: "libtpu-0.0.99", record: true, files: map[string][]byte{"libtpu/libtpu.so": tpuSO},
			corrupt: map[string]bool{"libtpu/libtpu.so": true}}, nil, "", nil, "does not match the wheel's RECORD"},
		{"no record", wheel{dist: "libtpu-0.0.99", files: map[string][]byte{"libtpu/libtpu.so": tpuSO}}, nil, "", nil, "not a wheel"},
		{"not elf", newWheel("libtpu-0.0.99", map[string][]byte{"libtpu/libtpu.so": []byte("#!/bin/sh\nGetPjrtApi\n")}), nil, "", nil, "not an ELF"},
		{"not a plugin", newWheel("libtpu-0.0.99", map[string][]byte{"libtpu/libtpu.so": []byte("\x7fELF" + strings.Repeat("x", 64))}), nil, "", nil, "GetPjrtApi"},
		{"no plugin", newWheel("jax-0.11.2", map[string][]byte{"jax/__init__.py": []byte("")}), nil, "", nil, "no PJRT plugin"},
		{"two plugins", newWheel("odd-1.0", map[string][]byte{"a/libtpu.so": tpuSO, "b/xla_cuda_plugin.so": cudaSO}), nil, "", nil, "several plugins"},
		{"bad name", newWheel("libtpu-0.0.99", map[string][]byte{"libtpu/libtpu.so": tpuSO}), []string{"--name", "../x"}, "", nil, "--name"},
	}
	// Every case with unzip when it is installed; python3 (slow to start through pyenv's
	// shim) repeats the ones that exercise its own code: listing, extraction, hashing.
	pythonCases := map[string]bool{"libtpu": true, "jax cuda pjrt": true, "tampered": true, "no record": true}
	xs := extractors(t)
	hasUnzip := slices.Contains(xs, "unzip")
	for _, x := range xs {
		for _, tc := range tests {
			if x == "python3" && hasUnzip && !pythonCases[tc.name] {
				continue
			}
			t.Run(x+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				whl := tc.wheel.write(t, dir)
				dest := filepath.Join(dir, "go-xla")
				out, err := runInstall(t, x, append(append([]string{"--dest", dest}, tc.extra...), whl)...)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(out, tc.wantErr) {
						t.Fatalf("err %v, output %q; want a failure saying %q", err, out, tc.wantErr)
					}
					if entries, _ := os.ReadDir(dest); len(entries) != 0 {
						t.Errorf("a failed install left %d entries in %s", len(entries), dest)
					}
					return
				}
				if err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				got, err := os.ReadFile(filepath.Join(dest, tc.wantOut))
				if err != nil {
					t.Fatalf("%v (output %q)", err, out)
				}
				if !bytes.Equal(got, tc.want) {
					t.Errorf("installed %d bytes differing from the wheel's member", len(got))
				}
				if fi, _ := os.Stat(filepath.Join(dest, tc.wantOut)); fi.Mode().Perm() != 0o755 {
					t.Errorf("mode %v, want 0755", fi.Mode().Perm())
				}
			})
		}
	}
}

func TestInstallNVIDIALibrariesFromWheels(t *testing.T) {
	for _, x := range extractors(t) {
		t.Run(x, func(t *testing.T) {
			dir := t.TempDir()
			cublas := newWheel("nvidia_cublas-13.0.0", map[string][]byte{
				"nvidia/__init__.py":                []byte(""),
				"nvidia/cu13/lib/libcublas.so.13":   fakeSO("cublas"),
				"nvidia/cu13/lib/libcublasLt.so.13": fakeSO("cublasLt"),
				"nvidia/cu13/bin/ptxas":             []byte("\x7fELFptxas"),
			}).write(t, dir)
			cudnn := newWheel("nvidia_cudnn_cu13-9.10.0", map[string][]byte{
				"nvidia/cudnn/lib/libcudnn.so.9": fakeSO("cudnn"),
				"nvidia_cudnn_cu13/LICENSE":      []byte("license"),
			}).write(t, dir)
			dest := filepath.Join(dir, "go-xla")
			if out, err := runInstall(t, x, "--nvidia-libs", "--dest", dest, cublas, cudnn); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for path, want := range map[string][]byte{
				"nvidia/cu13/lib/libcublas.so.13": fakeSO("cublas"),
				"nvidia/cudnn/lib/libcudnn.so.9":  fakeSO("cudnn"),
				"nvidia/bin/ptxas":                []byte("\x7fELFptxas"), // through the symlink XLA needs
			} {
				got, err := os.ReadFile(filepath.Join(dest, path))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s: %v, %q", path, err, got)
				}
			}
			if _, err := os.Stat(filepath.Join(dest, "nvidia", "nvidia_cudnn_cu13")); err == nil {
				t.Errorf("copied files from outside nvidia/")
			}

			bad := wheel{dist: "nvidia_nccl-2.0", record: true, files: map[string][]byte{"nvidia/nccl/lib/libnccl.so.2": fakeSO("nccl")},
				corrupt: map[string]bool{"nvidia/nccl/lib/libnccl.so.2": true}}.write(t, dir)
			dest2 := filepath.Join(dir, "other")
			if out, err := runInstall(t, x, "--nvidia-libs", "--dest", dest2, bad); err == nil || !strings.Contains(out, "RECORD") {
				t.Errorf("tampered NVIDIA wheel: err %v, output %q", err, out)
			}
			if _, err := os.Stat(dest2); err == nil {
				t.Errorf("a failed install created %s", dest2)
			}

			// A member that climbs out of nvidia/ (zip slip) is refused before extraction.
			slip := newWheel("nvidia_evil-1.0", map[string][]byte{"nvidia/../../evil.so": fakeSO("evil")}).write(t, dir)
			if out, err := runInstall(t, x, "--nvidia-libs", "--dest", filepath.Join(dir, "slip"), slip); err == nil || !strings.Contains(out, "unsafe member") {
				t.Errorf("zip slip: err %v, output %q", err, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "evil.so")); err == nil {
				t.Errorf("zip slip wrote outside the destination")
			}
		})
	}
}

func TestInstallScriptUsage(t *testing.T) {
	x := extractors(t)[0]
	for _, args := range [][]string{{}, {"--bogus"}, {"a.whl", "b.whl"}} {
		out, err := runInstall(t, x, args...)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(out, "usage:") {
			t.Errorf("%q: err %v, output %q; want exit 2 with usage", args, err, out)
		}
	}
	if out, err := runInstall(t, x, filepath.Join(t.TempDir(), "missing.whl")); err == nil || !strings.Contains(out, "no such file") {
		t.Errorf("missing wheel: err %v, output %q", err, out)
	}
}
