"""Config overrides for the cheapest real trainer run (smoke preset): shared by the tests that
start one, so a change to what "tiny" means is made once."""

TINY_RUN = (
    "--config.rollout.rollout_batch_size=2",
    "--config.rollout.n_samples_per_prompt=1",
    "--config.rollout.max_new_tokens=12",
    "--config.rollout.min_new_tokens=2",
    "--config.train.samples_per_optimizer_step=2",
    "--config.train.micro_batch_size=1",
    "--config.data.synthetic.n_train=4",
)
