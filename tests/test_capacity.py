"""The capacity model turns measurements into a fleet: boxes by users per box and images/s, keys by RPM and TPM."""

import tomllib

from bench import capacity

PRICES = tomllib.loads(capacity.PRICES.read_text())


def measured(**overrides):
    base = {
        "users_per_box": 1500,
        "uploads_per_user_hour": 6.0,
        "capsules_per_user_hour": 4.0,
        "images_per_s_measured_box": 3.6,
        "shared_box_keeps_up_with_uploads": True,
    }
    return {**base, **overrides}


def test_keys_are_counted_by_tokens_when_tokens_bind_first():
    fleet = capacity.fleet(1000, measured(), PRICES)

    model = PRICES["model"]
    usable = 1 - model["openai_headroom"]
    # 1,000 users x (6 analyses + 4 capsules) an hour, doubled for the peak: ~333 RPM, one key's worth...
    assert fleet["openai_rpm"] < model["openai_rpm_per_key"] * usable
    # ...but every call is charged its max_completion_tokens up front, so tokens need more keys.
    assert fleet["openai_tpm"] > model["openai_tpm_per_key"] * usable
    assert fleet["openai_keys"] * model["openai_tpm_per_key"] * usable >= fleet["openai_tpm"]
    assert fleet["openai_keys"] > 1


def test_one_box_runs_everything_only_when_it_kept_up_with_uploads():
    kept_up = capacity.fleet(1000, measured(), PRICES)
    fell_behind = capacity.fleet(1000, measured(shared_box_keeps_up_with_uploads=False), PRICES)

    assert kept_up["api_boxes"] == fell_behind["api_boxes"] == 1
    assert kept_up["worker_boxes"] == 0
    assert fell_behind["worker_boxes"] == 1
    assert fell_behind["monthly_usd"] == kept_up["monthly_usd"] + PRICES["prices"]["worker_box"]


def test_a_larger_fleet_sizes_worker_boxes_by_measured_images_per_second():
    fleet = capacity.fleet(100_000, measured(), PRICES)

    model = PRICES["model"]
    per_box = 3.6 * model["worker_box_cpus"] / model["measured_box_cpus"] * model["target_utilisation"]
    assert fleet["worker_boxes"] * per_box >= fleet["images_per_s_needed"]
    assert (fleet["worker_boxes"] - 1) * per_box < fleet["images_per_s_needed"]
    assert fleet["api_boxes"] == -(-100_000 // int(1500 * model["target_utilisation"]))
