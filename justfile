# delit's common tasks. Install `just` with `pip install rust-just`.

venv := ".venv"
py := venv + "/bin/python"

# Create the virtual environment and install delit with its dev tools.
setup:
    test -x {{py}} || python3 -m venv {{venv}}
    {{py}} -m pip install -q -e ".[dev]"

# Run the test suite (the same command CI runs).
test: setup
    {{py}} -m pytest -q -n 2

# Lint and check formatting.
lint: setup
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .

# Format the code in place.
fmt:
    {{venv}}/bin/ruff check --fix .
    {{venv}}/bin/ruff format .

# The whole job on the bundled demo codec: synth -> encode -> train-heads -> eval -> report.
demo out="demo_out": setup
    {{venv}}/bin/delit demo --out {{out}}

# Check a Wan VAE file or folder (or `demo`).
vae-check vae="demo": setup
    {{venv}}/bin/delit vae-check --vae {{vae}}

# Benchmarks (print tables; pass e.g. `--device cuda` on a GPU machine).
bench *args: setup
    {{py}} benchmarks/bench_synth.py
    {{py}} benchmarks/bench_vae.py --vae demo {{args}}
