"""Multi-turn envs own the rollout; the trajectory holds the exact sampled ids with a loss mask."""

from answerkey import chat
from answerkey.config import LearnerConfig
from answerkey.envs import MultiTurnEnv, Trajectory
from answerkey.envs.synthetic import SyntheticRetryEnv
from answerkey.learner.learner import Learner
from answerkey.pretrain.bootstrap import solution_conversations
from answerkey.rewards import Status
from answerkey.rollout.engine import SamplingParams
from answerkey.rollout.torch_engine import TorchEngine


def warmed_up(model, tokenizer, env, steps=40):
    """A few SFT steps on worked solutions, so the policy answers in the format and stops."""
    learner = Learner(model, LearnerConfig(lr=3e-3), SamplingParams(), total_steps=steps)
    examples = [chat.encode(tokenizer, c) for c in solution_conversations(env)[:64]]
    for i in range(steps):
        learner.sft_step(examples[i % 2 :: 2])
    return model


def test_retry_env_trajectory_keeps_sampled_ids_and_masks_env_turns(tokenizer, make_model):
    env = SyntheticRetryEnv(max_attempts=3, difficulty=1)
    assert isinstance(env, MultiTurnEnv)
    engine = TorchEngine(warmed_up(make_model(), tokenizer, env), tokenizer, seed=0)
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0)
    calls = []

    def generate(ids):
        completion = engine.generate([list(ids)], 1, sampling)[0][0]
        calls.append((list(ids), completion))
        return completion

    stop_id = tokenizer.convert_tokens_to_ids(chat.IM_END)
    with_retries = None
    for problem in env.problems("train")[:20]:
        traj = env.rollout(problem, generate, tokenizer)
        if len(calls) > 1:
            with_retries = traj
            break
        calls.clear()
    assert with_retries is not None, "the policy never retried after a wrong answer in 20 problems"
    traj = with_retries
    # every generate call saw exactly the ids so far (never re-tokenized text) and its sample follows them
    full = traj.prompt_ids + traj.completion_ids
    for ids, completion in calls:
        assert full[: len(ids)] == ids
        assert full[len(ids) : len(ids) + len(completion.token_ids)] == completion.token_ids
    sampled = [t for _, c in calls for t in c.token_ids]
    assert [t for t, m in zip(traj.completion_ids, traj.loss_mask, strict=True) if m] == sampled
    sampled_logprobs = [lp for _, c in calls for lp in c.logprobs]
    assert [lp for lp, m in zip(traj.logprobs, traj.loss_mask, strict=True) if m] == sampled_logprobs
    inserted = [t for t, m in zip(traj.completion_ids, traj.loss_mask, strict=True) if not m]
    feedback = tokenizer.decode(inserted)
    assert feedback.count("Not quite. Try again.") == len(calls) - 1
    assert feedback.startswith("\n<|im_start|>user\n") and feedback.endswith("<|im_start|>assistant\n")
    # env turns follow a sampled <|im_end|>
    assert traj.completion_ids[traj.loss_mask.index(0) - 1] == stop_id
    assert traj.prompt_ids + traj.completion_ids == calls[-1][0] + calls[-1][1].token_ids


def test_learner_trains_only_on_the_policys_tokens_of_a_multi_turn_trajectory(tokenizer, make_model):
    model = make_model()
    env = SyntheticRetryEnv(max_attempts=2, difficulty=1)
    engine = TorchEngine(model, tokenizer, seed=1)
    sampling = SamplingParams(max_new_tokens=6)
    problem = env.problems("train")[0]

    def generate(ids):
        return engine.generate([list(ids)], 1, sampling)[0][0]

    group = [env.rollout(problem, generate, tokenizer) for _ in range(4)]
    rewarded = Trajectory(group[0].prompt_ids, group[0].completion_ids, group[0].loss_mask, group[0].logprobs,
                          group[0].score.__class__(1.0, Status.correct), group[0].finish_reason)
    learner = Learner(model, LearnerConfig(lr=1e-3), sampling, total_steps=1)
    batch = learner.prepare([[rewarded, *group[1:]]])
    assert batch.norm.tokens == sum(sum(t.loss_mask) for t in [rewarded, *group[1:]])
    assert learner.step([[rewarded, *group[1:]]])["learner/grad_norm"] > 0
