from harness.cli import main

if __name__ == "__main__":  # the guard matters: megatron's dist_checkpointing spawns workers
    main()
