"""Small stand-ins for the paper's four hub data sets, written into a hub-layout cache.

Each file has the repository's path, format and schema (column names, Arrow types, nesting) as
the hub's dataset cards list them; the rows are our own. Every data set has one malformed row
(MALFORMED: file, row number, field, reason).
"""
import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.hub_layout import write_hub_repo

GSM8K_SCHEMA = pa.schema([("question", pa.string()), ("answer", pa.string())])
OPENR1_SCHEMA = pa.schema([
    ("problem", pa.string()), ("solution", pa.string()), ("answer", pa.string()),
    ("problem_type", pa.string()), ("question_type", pa.string()), ("source", pa.string()),
    ("uuid", pa.string()), ("is_reasoning_complete", pa.list_(pa.bool_())),
    ("generations", pa.list_(pa.string())), ("correctness_math_verify", pa.list_(pa.bool_())),
    ("correctness_llama", pa.list_(pa.bool_())), ("finish_reasons", pa.list_(pa.string())),
    ("correctness_count", pa.int64()),
    ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
])
OBQA_SCHEMA = pa.schema([
    ("id", pa.string()), ("question_stem", pa.string()),
    ("choices", pa.struct([("text", pa.list_(pa.string())), ("label", pa.list_(pa.string()))])),
    ("answerKey", pa.string()), ("fact1", pa.string()), ("humanScore", pa.float32()),
    ("clarity", pa.float32()), ("turkIdAnonymized", pa.string()),
])

GSM8K_TRAIN = [
    ("Tom has 3 boxes of 12 pencils. He gives away 10 pencils. How many are left?",
     "He had 3 * 12 = <<3*12=36>>36 pencils.\nHe has 36 - 10 = <<36-10=26>>26 left.\n#### 26"),
    ("A shirt costs $15 and a hat costs $7. What do 2 shirts and 3 hats cost?",
     "Shirts cost 2 * 15 = <<2*15=30>>30 dollars.\nHats cost 3 * 7 = <<3*7=21>>21 dollars.\n"
     "Together 30 + 21 = <<30+21=51>>51 dollars.\n#### 51"),
    ("A farm sold 1,250 eggs on Monday and 1,750 on Tuesday. How many eggs in all?",
     "1,250 + 1,750 = <<1250+1750=3000>>3,000 eggs.\n#### 3,000"),
    ("Sara reads 20 pages a day. How many days for a 140-page book?",
     "140 / 20 = <<140/20=7>>7 days.\n#### 7"),
    ("Broken row: the worked solution has no final answer line.", "Half of 10 is 5, so the answer is 5."),
    ("The temperature was 4 degrees and fell by 9. What is it now?", "4 - 9 = <<4-9=-5>>-5\n#### -5"),
    ("Ann has 5 apples and eats 2. How many are left?", "5 - 2 = <<5-2=3>>3\n#### 3"),
]
GSM8K_TEST = [
    ("Ben runs 2 miles a day for 6 days. How far does he run?", "2 * 6 = <<2*6=12>>12 miles.\n#### 12"),
    ("A pizza has 8 slices; 3 are eaten. How many remain?", "8 - 3 = <<8-3=5>>5\n#### 5"),
]


def openr1_row(i, problem, solution, answer):
    generation = f"<think>\nLet me work it out.\n</think>\n{solution}"
    return dict(problem=problem, solution=solution, answer=answer, problem_type="Algebra",
                question_type="math-word-problem", source="olympiads", uuid=f"uuid-{i:04d}",
                is_reasoning_complete=[True, True], generations=[generation, generation],
                correctness_math_verify=[True, False], correctness_llama=None, finish_reasons=["stop", "stop"],
                correctness_count=1, messages=[{"content": problem, "role": "user"},
                                               {"content": generation, "role": "assistant"}])


OPENR1_SHARDS = [
    [openr1_row(0, "Solve $2x + 3 = 11$.", "Subtract 3: $2x = 8$, so $x = \\boxed{4}$.", "4"),
     openr1_row(1, "Compute $\\frac{1}{2} + \\frac{1}{3}$.",
                "## Solution\n\nThe common denominator is 6: $\\frac{3}{6} + \\frac{2}{6} = \\frac{5}{6}$.\n\n"
                "Answer: $\\frac{5}{6}$.", "\\frac{5}{6}"),
     openr1_row(2, "Find all real $x$ with $x^2 = 9$.", "So $x = \\pm 3$, i.e. $\\boxed{-3, 3}$.", "-3, 3"),
     openr1_row(3, "Broken row: the answer field is empty.", "Nothing to see.", "")],
    [openr1_row(4, "How many primes are below 10?", "They are 2, 3, 5, 7: $\\boxed{4}$ primes.", "4"),
     openr1_row(5, "Simplify $\\sqrt{50}$.", "$\\sqrt{50} = \\sqrt{25 \\cdot 2} = \\boxed{5\\sqrt{2}}$.", "5\\sqrt{2}"),
     openr1_row(6, "What is $11,\\!111 \\times 9$?", "$11,\\!111 \\times 9 = \\boxed{99,\\!999}$.", "99999"),
     openr1_row(7, "Evaluate $3! \\times 5!$.", "The answer is $3! \\times 5! = \\boxed{720}$.", "720")],
]


def obqa_row(i, stem, texts, key, fact):
    return dict(id=f"{i}-{100 + i}", question_stem=stem, choices=dict(text=texts, label=["A", "B", "C", "D"]),
                answerKey=key, fact1=fact, humanScore=1.0, clarity=2.0, turkIdAnonymized="b356d338b7")


OBQA = {
    "train": [obqa_row(1, "The sun is responsible for", ["puppies learning new tricks", "plants sprouting",
                                                         "children growing up", "flowers wilting in a vase"],
                       "B", "the sun is the source of energy for physical cycles on Earth"),
              obqa_row(2, "Which is a conductor?", ["wood", "rubber", "an iron nail", "glass"], "C",
                       "metal is a thermal conductor"),
              obqa_row(3, "Broken row: the answer key names no option", ["a", "b", "c", "d"], "E", "none"),
              obqa_row(4, "A bird's feathers help it", ["fly", "swim deep", "dig", "see"], "A",
                       "feathers are used for flight by birds")],
    "validation": [obqa_row(5, "Plants need", ["salt", "sunlight", "sand", "smoke"], "B",
                            "plants require sunlight to grow")],
    "test": [obqa_row(6, "Ice melts when it is", ["frozen", "cold", "heated", "dark"], "C",
                      "heating a solid can cause it to melt"),
             obqa_row(7, "A magnet attracts", ["paper", "iron", "plastic", "cloth"], "B",
                      "a magnet attracts magnetic metals")],
}

COT = {
    "0": dict(source="Is the following sentence plausible? \"The goalie saved a penalty.\"",
              target="yes", rationale="Goalies try to stop penalty kicks, so saving one is plausible.",
              task="bigbench_sports", type="CoT"),
    "1": dict(source="Premise: A man is playing a guitar. Hypothesis: A man is making music. Options: "
                     "- yes - it is not possible to tell - no", target="yes",
              rationale="Playing a guitar makes music.", task="snli", type="CoT"),
    "2": dict(source="What is 15 + 27?", target="42", rationale="15 + 27 = 42.", task="math_qa", type="CoT"),
    "3": dict(source="Broken row: the target is a list, not a string.", target=["a", "b"],
              rationale="x", task="broken", type="CoT"),
    "4": dict(source="Which is heavier, a kilogram of feathers or a kilogram of iron?",
              target="neither", rationale="Both weigh one kilogram.", task="riddles", type="CoT"),
    "5": dict(source="Translate 'merci' to English.", target="thank you",
              rationale="'Merci' is French for thank you.", task="translation", type="CoT"),
}

# (file in the repository, row number, field, reason) of each data set's malformed row
MALFORMED = {
    "gsm8k": ("main/train-00000-of-00001.parquet", 5, "answer", "no_final_answer"),
    "openr1_math": ("data/train-00000-of-00002.parquet", 4, "answer", "empty_answer"),
    "openbookqa": ("additional/train-00000-of-00001.parquet", 3, "answer", "bad_answer_key"),
    "cot_collection": ("data/CoT_collection_en.json", 4, "target", "wrong_type"),
}


def _parquet(path, rows, schema):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_paper_fixtures(cache, scratch):
    """Write the four data sets into the hub cache folder `cache`; returns {name: snapshot folder}."""
    scratch.mkdir(parents=True, exist_ok=True)
    gsm = {"main/train-00000-of-00001.parquet": _parquet(
               scratch / "gsm_train.parquet", [dict(question=q, answer=a) for q, a in GSM8K_TRAIN], GSM8K_SCHEMA),
           "main/test-00000-of-00001.parquet": _parquet(
               scratch / "gsm_test.parquet", [dict(question=q, answer=a) for q, a in GSM8K_TEST], GSM8K_SCHEMA),
           "README.md": b"---\nconfigs:\n- config_name: main\n---\n"}
    openr1 = {f"data/train-0000{k}-of-00002.parquet": _parquet(scratch / f"openr1_{k}.parquet", rows, OPENR1_SCHEMA)
              for k, rows in enumerate(OPENR1_SHARDS)}
    obqa = {f"additional/{split}-00000-of-00001.parquet": _parquet(scratch / f"obqa_{split}.parquet", rows, OBQA_SCHEMA)
            for split, rows in OBQA.items()}
    cot = {"data/CoT_collection_en.json": json.dumps(COT, indent=1).encode(),
           "CoT-Collection.py": b"raise SystemExit('a loading script: never run')\n"}
    return {"gsm8k": write_hub_repo(cache, "openai/gsm8k", gsm, "dataset"),
            "openr1_math": write_hub_repo(cache, "open-r1/OpenR1-Math-220k", openr1, "dataset"),
            "openbookqa": write_hub_repo(cache, "allenai/openbookqa", obqa, "dataset"),
            "cot_collection": write_hub_repo(cache, "kaist-ai/CoT-Collection", cot, "dataset")}
