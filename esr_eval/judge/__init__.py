"""The attempts judge: its protocol (rubric, parser, `judge_answer`) and the offline grader."""
