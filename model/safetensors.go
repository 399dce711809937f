package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// ErrWeights is wrapped by every checkpoint error (missing, mis-shaped or truncated tensor,
// corrupt header).
var ErrWeights = errors.New("invalid checkpoint")

// maxHeaderBytes bounds the JSON header of a safetensors file (the format's own limit is 100 MB).
const maxHeaderBytes = 100 << 20

// TensorInfo describes one tensor of a safetensors file.
type TensorInfo struct {
	Name  string
	DType string // "BF16", "F16", "F32", …
	Shape []int
	// Begin and End are byte offsets into the file's data section.
	Begin, End int64
	File       string
}

// NumElements is the product of the shape.
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// safetensorsFile is one memory-mapped .safetensors file.
type safetensorsFile struct {
	path    string
	data    []byte // the whole mapped file
	dataOff int64  // start of the data section
	tensors map[string]TensorInfo
}

func dtypeSize(dt string) int {
	switch dt {
	case "F32", "I32", "U32":
		return 4
	case "BF16", "F16", "I16", "U16":
		return 2
	case "F64", "I64", "U64":
		return 8
	case "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2":
		return 1
	}
	return 0
}

// openSafetensors maps path and parses and checks its header.
func openSafetensors(path string) (*safetensorsFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWeights, err)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%w: %s: file is %d bytes, too short for a safetensors header", ErrWeights, path, size)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: mmap: %w", ErrWeights, path, err)
	}
	sf := &safetensorsFile{path: path, data: data}
	if err := sf.parseHeader(); err != nil {
		sf.close()
		return nil, err
	}
	return sf, nil
}

func (sf *safetensorsFile) close() {
	if sf.data != nil {
		_ = syscall.Munmap(sf.data)
		sf.data = nil
	}
}

func (sf *safetensorsFile) parseHeader() error {
	size := int64(len(sf.data))
	hlen := binary.LittleEndian.Uint64(sf.data[:8])
	if hlen > maxHeaderBytes || int64(hlen) > size-8 {
		return fmt.Errorf("%w: %s: corrupt header: header length %d exceeds file size %d", ErrWeights, sf.path, hlen, size)
	}
	sf.dataOff = 8 + int64(hlen)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(sf.data[8:sf.dataOff], &raw); err != nil {
		return fmt.Errorf("%w: %s: corrupt header: %w", ErrWeights, sf.path, err)
	}
	sf.tensors = make(map[string]TensorInfo, len(raw))
	dataLen := size - sf.dataOff
	for name, msg := range raw {
		if name == "__metadata__" {
			continue
		}
		var h struct {
			DType   string  `json:"dtype"`
			Shape   []int   `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &h); err != nil {
			return fmt.Errorf("%w: %s: corrupt header entry for tensor %s: %w", ErrWeights, sf.path, name, err)
		}
		info := TensorInfo{Name: name, DType: h.DType, Shape: h.Shape, File: sf.path}
		if len(h.Offsets) != 2 || h.Offsets[0] < 0 || h.Offsets[1] < h.Offsets[0] {
			return fmt.Errorf("%w: %s: tensor %s has bad data_offsets %v", ErrWeights, sf.path, name, h.Offsets)
		}
		info.Begin, info.End = h.Offsets[0], h.Offsets[1]
		es := dtypeSize(h.DType)
		if es == 0 {
			return fmt.Errorf("%w: %s: tensor %s has unknown dtype %q", ErrWeights, sf.path, name, h.DType)
		}
		for _, d := range h.Shape {
			if d < 0 {
				return fmt.Errorf("%w: %s: tensor %s has negative dimension in shape %v", ErrWeights, sf.path, name, h.Shape)
			}
		}
		if want := info.NumElements() * int64(es); info.End-info.Begin != want {
			return fmt.Errorf("%w: %s: tensor %s: shape %v of %s needs %d bytes, offsets give %d",
				ErrWeights, sf.path, name, h.Shape, h.DType, want, info.End-info.Begin)
		}
		if info.End > dataLen {
			return fmt.Errorf("%w: %s: tensor %s is truncated: data ends at byte %d, file has %d data bytes",
				ErrWeights, sf.path, name, info.End, dataLen)
		}
		sf.tensors[name] = info
	}
	return nil
}

// bytes returns the raw little-endian bytes of a tensor (a view into the mapping).
func (sf *safetensorsFile) bytes(info TensorInfo) []byte {
	return sf.data[sf.dataOff+info.Begin : sf.dataOff+info.End]
}

// Checkpoint is a set of memory-mapped safetensors files: one model.safetensors, or the
// shards listed in model.safetensors.index.json.
type Checkpoint struct {
	Dir     string
	files   []*safetensorsFile
	tensors map[string]*tensorRef
}

type tensorRef struct {
	info TensorInfo
	file *safetensorsFile
}

// OpenCheckpoint maps the safetensors files of a checkpoint directory.
func OpenCheckpoint(dir string) (*Checkpoint, error) {
	ck := &Checkpoint{Dir: dir, tensors: map[string]*tensorRef{}}
	indexPath := filepath.Join(dir, "model.safetensors.index.json")
	var files []string
	var weightMap map[string]string
	if data, err := os.ReadFile(indexPath); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(data, &idx); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrWeights, indexPath, err)
		}
		if len(idx.WeightMap) == 0 {
			return nil, fmt.Errorf("%w: %s: weight_map is empty", ErrWeights, indexPath)
		}
		weightMap = idx.WeightMap
		seen := map[string]bool{}
		for _, f := range idx.WeightMap {
			if !seen[f] {
				seen[f] = true
				files = append(files, f)
			}
		}
		sort.Strings(files)
	} else {
		single := filepath.Join(dir, "model.safetensors")
		if _, err := os.Stat(single); err != nil {
			return nil, fmt.Errorf("%w: %s has neither model.safetensors nor model.safetensors.index.json", ErrWeights, dir)
		}
		files = []string{"model.safetensors"}
	}
	for _, name := range files {
		if filepath.Base(name) != name {
			ck.Close()
			return nil, fmt.Errorf("%w: %s: shard name %q must be a plain file name", ErrWeights, indexPath, name)
		}
		sf, err := openSafetensors(filepath.Join(dir, name))
		if err != nil {
			ck.Close()
			return nil, err
		}
		ck.files = append(ck.files, sf)
		for tname, info := range sf.tensors {
			if prev, dup := ck.tensors[tname]; dup {
				ck.Close()
				return nil, fmt.Errorf("%w: tensor %s is in both %s and %s", ErrWeights, tname, prev.file.path, sf.path)
			}
			ck.tensors[tname] = &tensorRef{info: info, file: sf}
		}
	}
	for tname, fname := range weightMap {
		ref, ok := ck.tensors[tname]
		if !ok {
			ck.Close()
			return nil, fmt.Errorf("%w: tensor %s is listed in %s for %s but %s does not hold it",
				ErrWeights, tname, indexPath, fname, filepath.Join(dir, fname))
		}
		if filepath.Base(ref.file.path) != fname {
			ck.Close()
			return nil, fmt.Errorf("%w: tensor %s is listed for %s but found in %s", ErrWeights, tname, fname, ref.file.path)
		}
	}
	return ck, nil
}

// Close unmaps every file.
func (ck *Checkpoint) Close() {
	for _, f := range ck.files {
		f.close()
	}
	ck.files = nil
}

// Lookup returns a tensor's description.
func (ck *Checkpoint) Lookup(name string) (TensorInfo, bool) {
	ref, ok := ck.tensors[name]
	if !ok {
		return TensorInfo{}, false
	}
	return ref.info, true
}

// Names lists every tensor name, sorted.
func (ck *Checkpoint) Names() []string {
	out := make([]string, 0, len(ck.tensors))
	for n := range ck.tensors {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Bytes returns a tensor's raw bytes (a read-only view into the mapping, valid until Close).
func (ck *Checkpoint) Bytes(name string) ([]byte, error) {
	ref, ok := ck.tensors[name]
	if !ok {
		return nil, fmt.Errorf("%w: tensor %s not found in %s", ErrWeights, name, ck.Dir)
	}
	return ref.file.bytes(ref.info), nil
}
