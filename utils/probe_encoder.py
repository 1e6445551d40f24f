#!/usr/bin/env python3
"""Linear keyword-spotting probe of a frozen encoder, against a random-init twin.

How much does an encoder's pre-training buy? This probe answers on Speech Commands in
minutes on a CPU: every clip goes once through the frozen encoder (``SSLUpstream``);
each layer's states are mean-pooled over the clip; a linear head on the softmax-weighted
sum of those pooled layers (s3prl's featurizer, per-vector layer norm first) learns the
word from the training clips with full-batch Adam for a fixed number of steps and fixed
seeds; the score is the accuracy on the held-out speakers (the validation and test
splits together: nothing is tuned on them, and together they halve the noise). With ``--compare_random`` the same
probe runs on a randomly initialised encoder of the same configuration
(``--random_inits default lowpass`` adds the CNN initialisation that ``recipes/pretrain``
starts from, to separate what pre-training learned from what that initialisation gives).

Data: a Speech Commands v0.01 folder (word folders; ``testing_list.txt`` /
``validation_list.txt`` when present, otherwise TensorFlow's hash split). The probe
trains on the train split and reports on the validation + test splits; every word
folder is a class.

Example::

    python utils/probe_encoder.py --encoder assets/encoder --compare_random \
        --data_folder data/mini/speech_commands_v0.01
"""

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewire_lobes.data.audio import load_audio  # noqa: E402
from rewire_lobes.data.mini_corpus import speech_commands_split  # noqa: E402
from rewire_lobes.upstream.pretrain import lowpass_feature_encoder_init  # noqa: E402
from rewire_lobes.upstream.encoder import (  # noqa: E402
    SSLUpstream,
    WeightedLayerSum,
    export_encoder,
    read_do_normalize,
)

logger = logging.getLogger("probe_encoder")


def speech_commands_items(data_folder, max_train_per_word=None, seed=0):
    """``(train, held_out, words)``; items are ``(path, label index)``, in a fixed order.

    Held out: the validation and test splits (other speakers than the train split's).
    """
    root = Path(data_folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{data_folder}: no such Speech Commands folder")
    lists = {}
    for split, name in (("testing", "testing_list.txt"), ("validation", "validation_list.txt")):
        if (root / name).is_file():
            lists[split] = set((root / name).read_text(encoding="utf-8").split())
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if len(words) < 2:
        raise ValueError(f"{data_folder}: expected word folders (yes/, no/, ...), found {words}")
    train, test = [], []
    for label, word in enumerate(words):
        clips = sorted((root / word).glob("*.wav"))
        word_train = []
        for clip in clips:
            relative = f"{word}/{clip.name}"
            if lists:
                split = next((s for s, names in lists.items() if relative in names), "train")
            else:
                split = speech_commands_split(relative)
            if split in ("testing", "validation"):
                test.append((clip, label))
            elif split == "train":
                word_train.append((clip, label))
        if max_train_per_word is not None and len(word_train) > max_train_per_word:
            word_train = random.Random(f"{seed}/{word}").sample(word_train, max_train_per_word)
        train.extend(word_train)
    if not train or not test:
        raise ValueError(f"{data_folder}: {len(train)} train and {len(test)} held-out clips; need both")
    return train, test, words


@torch.no_grad()
def pooled_layer_features(upstream, paths, batch_size=16):
    """``[N, L+1, D]``: each layer's states averaged over the clip's frames.

    Clips are batched only with clips of the same length, so no padding reaches the
    encoder (group-norm front-ends would normalise over it).
    """
    wavs = [load_audio(path) for path in paths]
    by_length = {}
    for index, wav in enumerate(wavs):
        by_length.setdefault(wav.numel(), []).append(index)
    features = [None] * len(wavs)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            hidden, frame_lens = upstream(torch.stack([wavs[i] for i in chunk]))
            pooled = hidden.sum(dim=2) / frame_lens.clamp(min=1)[None, :, None]
            for position, index in enumerate(chunk):
                features[index] = pooled[:, position]
    return torch.stack(features)


def train_linear_probe(train_x, train_y, num_classes, steps=300, lr=0.01, weight_decay=1e-3,
                       seed=0):
    """Layer weights + linear classifier, full-batch Adam, deterministic given ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    featurizer = WeightedLayerSum(train_x.shape[1], layer_norm=True)
    classifier = torch.nn.Linear(train_x.shape[2], num_classes)
    torch.random.set_rng_state(generator_state)
    params = list(featurizer.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    layers_first = train_x.transpose(0, 1)  # [L+1, N, D], as WeightedLayerSum expects
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(featurizer(layers_first)), train_y)
        loss.backward()
        optimizer.step()
    return featurizer, classifier


@torch.no_grad()
def accuracy(featurizer, classifier, x, y):
    return (classifier(featurizer(x.transpose(0, 1))).argmax(-1) == y).float().mean().item()


def random_twin(encoder, directory, seed=0, init="default"):
    """A randomly initialised encoder of ``encoder``'s configuration, in ``directory``.

    ``init="lowpass"`` starts its CNN as ``recipes/pretrain`` does by default
    (:func:`rewire_lobes.upstream.pretrain.lowpass_feature_encoder_init`): the control that
    separates what pre-training learned from what that initialisation gives.
    """
    config = transformers.AutoConfig.from_pretrained(str(encoder))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(config)
        if init == "lowpass":
            lowpass_feature_encoder_init(model)
    return export_encoder(model, directory, read_do_normalize(encoder))


def probe(encoder, train, test, num_classes, seeds=(0, 1, 2), steps=300):
    """Mean and per-seed test accuracy (and train accuracy) of the linear probe."""
    started = time.time()
    upstream = SSLUpstream(str(encoder), freeze=True)
    train_x = pooled_layer_features(upstream, [p for p, _ in train])
    test_x = pooled_layer_features(upstream, [p for p, _ in test])
    train_y = torch.tensor([label for _, label in train])
    test_y = torch.tensor([label for _, label in test])
    test_acc, train_acc, layer_weights = [], [], []
    for seed in seeds:
        featurizer, classifier = train_linear_probe(train_x, train_y, num_classes, steps, seed=seed)
        test_acc.append(accuracy(featurizer, classifier, test_x, test_y))
        train_acc.append(accuracy(featurizer, classifier, train_x, train_y))
        layer_weights.append(F.softmax(featurizer.weights.detach(), 0).tolist())
    return {
        "encoder": str(encoder),
        "held_out_accuracy": sum(test_acc) / len(test_acc),
        "held_out_accuracy_per_seed": test_acc,
        "train_accuracy": sum(train_acc) / len(train_acc),
        "layer_weights_seed0": [round(w, 3) for w in layer_weights[0]],
        "seconds": round(time.time() - started, 1),
    }


def run_probe(encoder, data_folder, compare_random=False, seeds=(0, 1, 2), steps=300,
              max_train_per_word=None, random_seed=0, random_inits=("default",)):
    """The probe's report as a dict (see ``main`` for the arguments)."""
    train, test, words = speech_commands_items(data_folder, max_train_per_word)
    report = {
        "data_folder": str(data_folder),
        "classes": len(words),
        "train_clips": len(train),
        "held_out_clips": len(test),
        "chance": max(sum(1 for _, y in test if y == c) for c in range(len(words))) / len(test),
        "head_seeds": list(seeds),
        "head_steps": steps,
        "encoder": probe(encoder, train, test, len(words), seeds, steps),
    }
    if compare_random:
        for init in random_inits:
            key = "random_init" if init == "default" else f"random_init_{init}"
            with tempfile.TemporaryDirectory() as tmp:
                twin = random_twin(encoder, Path(tmp) / key, seed=random_seed, init=init)
                report[key] = probe(twin, train, test, len(words), seeds, steps)
            report[key]["encoder"] = (
                f"random init ({init}) of {encoder}'s config (seed {random_seed})"
            )
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="assets/encoder", help="encoder directory")
    parser.add_argument("--data_folder", default="data/mini/speech_commands_v0.01")
    parser.add_argument("--compare_random", action="store_true",
                        help="also probe a randomly initialised encoder of the same config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="head seeds")
    parser.add_argument("--steps", type=int, default=300, help="head training steps")
    parser.add_argument("--max_train_per_word", type=int, default=None)
    parser.add_argument("--random_seed", type=int, default=0, help="seed of the random twin")
    parser.add_argument("--random_inits", nargs="+", default=["default"],
                        choices=["default", "lowpass"],
                        help="random twins to probe: transformers' init and/or the lowpass "
                        "CNN init that recipes/pretrain starts from")
    parser.add_argument("--output", default=None, help="also write the report here (json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    if Path(args.data_folder).resolve() == (Path.cwd() / "data/mini/speech_commands_v0.01").resolve():
        from rewire_lobes.data.mini_corpus import ensure_embedded_data

        ensure_embedded_data(args.data_folder)
    report = run_probe(args.encoder, args.data_folder, args.compare_random, tuple(args.seeds),
                       args.steps, args.max_train_per_word, args.random_seed,
                       tuple(args.random_inits))
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    line = f"held-out accuracy {report['encoder']['held_out_accuracy']:.3f}"
    for key in sorted(k for k in report if k.startswith("random_init")):
        line += f", {key} {report[key]['held_out_accuracy']:.3f}"
    logger.info("%s (chance %.3f, %d classes)", line, report["chance"], report["classes"])


if __name__ == "__main__":
    main()
