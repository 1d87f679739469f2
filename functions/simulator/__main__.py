"""``python -m functions.simulator --port N ...``"""

from functions.simulator.cli import sim_vllm

if __name__ == "__main__":
    sim_vllm(prog_name="python -m functions.simulator")
