# Session 13: dense by buckets under whole-pass CUDA graphs, against plain dense (graph_frames=0): the CUDA tests,
# then ms/frame from 16 frames of context over 100 and 240 frames (profile_step), with and without buckets.
source tools/gpu/setup.sh
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_graphs.py tests/test_attention_fastar.py 2>&1 | grep -E "passed|failed|FAILED|Error" | head -20
for p in '{}' '{"graph_frames": 0}'; do
  for ctx in "16 --frames 100" "16 --frames 240"; do
    echo "params $p context $ctx"; python3 tools/profile_step.py --attention dense --context $ctx --no-profile --params "$p" 2>&1 | grep -E "^step|Error"
  done
done
