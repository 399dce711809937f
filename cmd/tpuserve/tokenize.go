package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/tpuserve/tpuserve/tokenizer"
)

func init() {
	register("tokenize", "text on stdin → token ids as JSON (--tokenizer DIR|tokenizer.json, --jsonl)", runTokenize)
	register("detokenize", "token ids (JSON array) on stdin → text (--tokenizer DIR|tokenizer.json, --jsonl)", runDetokenize)
}

// loadTokenizer loads a directory (tokenizer.json + tokenizer_config.json) or a
// tokenizer.json file.
func loadTokenizer(path string) (*tokenizer.Tokenizer, error) {
	if path == "" {
		return nil, errors.New("--tokenizer is required (or set TPUSERVE_TOKENIZER_DIR)")
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return tokenizer.LoadDir(path)
	}
	return tokenizer.LoadFile(path)
}

func tokenizerFlag(fs *flag.FlagSet) *string {
	return fs.String("tokenizer", envOr("TPUSERVE_TOKENIZER_DIR", ""),
		"tokenizer directory or tokenizer.json file (default $TPUSERVE_TOKENIZER_DIR)")
}

func runTokenize(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := tokenizerFlag(fs)
	jsonl := fs.Bool("jsonl", false, "each stdin line is a JSON string; print one JSON id array per line")
	addSpecial := fs.Bool("add-special-tokens", false, "add BOS as HF's add_special_tokens=True does (default: HF's add_special_tokens=False)")
	literal := fs.Bool("literal", false, "encode special-token strings in the text (<start_of_turn>, <bos>...) as plain text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	tok, err := loadTokenizer(*path)
	if err != nil {
		return err
	}
	encode := tok.Encode
	if *literal {
		encode = tok.EncodeLiteral
	}
	w := bufio.NewWriter(stdout)
	if !*jsonl {
		text, err := io.ReadAll(stdin)
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		if _, err := w.Write(appendIDs(nil, encode(string(text), *addSpecial))); err != nil {
			return err
		}
		return w.Flush()
	}
	err = eachLine(stdin, func(n int, line string) error {
		var text string
		if err := json.Unmarshal([]byte(line), &text); err != nil {
			return fmt.Errorf("line %d: want a JSON string: %w", n, err)
		}
		_, err := w.Write(appendIDs(nil, encode(text, *addSpecial)))
		return err
	})
	if err != nil {
		return err
	}
	return w.Flush()
}

func runDetokenize(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("detokenize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := tokenizerFlag(fs)
	jsonl := fs.Bool("jsonl", false, "each stdin line is a JSON id array; print one JSON string per line")
	skip := fs.Bool("skip-special-tokens", false, "drop special tokens (<bos>, <end_of_turn>...) from the text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	tok, err := loadTokenizer(*path)
	if err != nil {
		return err
	}
	if !*jsonl {
		data, err := io.ReadAll(stdin)
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		ids, err := parseIDs(data)
		if err != nil {
			return err
		}
		text, err := tok.Decode(ids, *skip)
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, text) // exactly the text: no newline added
		return err
	}
	w := bufio.NewWriter(stdout)
	err = eachLine(stdin, func(n int, line string) error {
		ids, err := parseIDs([]byte(line))
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		text, err := tok.Decode(ids, *skip)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		out, err := json.Marshal(text)
		if err != nil {
			return err
		}
		_, err = w.Write(append(out, '\n'))
		return err
	})
	if err != nil {
		return err
	}
	return w.Flush()
}

// eachLine calls fn for each non-blank line (numbered from 1), of any length.
func eachLine(r io.Reader, fn func(n int, line string) error) error {
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadString('\n')
		if s := strings.TrimSpace(line); s != "" {
			if ferr := fn(n, s); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
	}
}

// parseIDs reads a JSON array of token ids.
func parseIDs(data []byte) ([]int32, error) {
	var raw []json.Number
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("want a JSON array of token ids: %w", err)
	}
	ids := make([]int32, len(raw))
	for i, n := range raw {
		v, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil || v < math.MinInt32 || v > math.MaxInt32 {
			return nil, fmt.Errorf("id %d: %s is not a token id", i, n)
		}
		ids[i] = int32(v)
	}
	return ids, nil
}

// appendIDs writes ids as a compact JSON array and a newline.
func appendIDs(b []byte, ids []int32) []byte {
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(id), 10)
	}
	return append(b, ']', '\n')
}
