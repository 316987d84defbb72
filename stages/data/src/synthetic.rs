//! The synthetic corpus, the text of the default recipe and of the tests: English-like stories
//! over a small world, deterministic for a seed, with structure at several depths so that a
//! bigger model can measurably beat a smaller one:
//!
//! - local: a fixed vocabulary, word order, punctuation, capitalisation;
//! - syntax: subject-verb agreement across nested relative clauses ("the dogs that the farmer
//!   feeds sleep"), pronoun gender agreement;
//! - memory: recurring named people whose attributes (city, job, pet, colour, lucky number,
//!   best friend) are the same in every document, asked and restated across the corpus;
//! - in-context: a thing found early in a story ("Mira found a blue key in the garden.") is
//!   referred to again at its end ("Later, Mira went back to the garden with the blue key.");
//! - counting and ordering: "counted the apples: one, two, three. Mira had three apples.",
//!   arithmetic sequences ("went up: 4, 7, 10, 13.").
//!
//! Documents are single lines separated by a blank line; a "word" is a whitespace-separated
//! token, and [`generate`] returns exactly the number of words asked (the last story is cut).
//!
//! [`tasks`] writes multiple-choice probes of the same structure from the same world (generic
//! layout, `{"context", "choices", "gold"}` per line), which `evaluate` scores as
//! lm-evaluation-harness does: `agreement` (the verb after a subject with relative clauses),
//! `attributes` (a recurring person's city, job or colour), `counting` (how many were counted),
//! `recall` (what was found at a story's start, asked at its end).

use crate::rng::Rng;

const JOBS: &[&str] = &[
    "baker", "farmer", "sailor", "teacher", "doctor", "painter", "miner", "weaver", "singer",
    "hunter", "tailor", "potter", "fisher", "guard", "cook", "builder",
];
const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "white", "black", "brown", "grey", "purple", "orange",
];
const PETS: &[(&str, &str)] = &[
    ("cat", "cats"),
    ("dog", "dogs"),
    ("bird", "birds"),
    ("horse", "horses"),
    ("goat", "goats"),
    ("rabbit", "rabbits"),
    ("fox", "foxes"),
    ("duck", "ducks"),
];
const NOUNS: &[(&str, &str)] = &[
    ("farmer", "farmers"),
    ("baker", "bakers"),
    ("child", "children"),
    ("dog", "dogs"),
    ("bird", "birds"),
    ("teacher", "teachers"),
    ("sailor", "sailors"),
    ("king", "kings"),
    ("fox", "foxes"),
    ("woman", "women"),
    ("man", "men"),
    ("girl", "girls"),
    ("boy", "boys"),
    ("horse", "horses"),
    ("queen", "queens"),
    ("cat", "cats"),
];
/// Transitive verbs: (third person singular, plural).
const TVERBS: &[(&str, &str)] = &[
    ("sees", "see"),
    ("follows", "follow"),
    ("helps", "help"),
    ("chases", "chase"),
    ("feeds", "feed"),
    ("likes", "like"),
    ("watches", "watch"),
    ("calls", "call"),
    ("finds", "find"),
    ("knows", "know"),
];
/// Intransitive verbs: (third person singular, plural).
const IVERBS: &[(&str, &str)] = &[
    ("sleeps", "sleep"),
    ("sings", "sing"),
    ("runs", "run"),
    ("waits", "wait"),
    ("laughs", "laugh"),
    ("works", "work"),
    ("dances", "dance"),
    ("rests", "rest"),
];
const ADJS: &[&str] = &[
    "old", "young", "small", "tall", "happy", "quiet", "brave", "clever", "tired", "kind",
];
const ADVERBIALS: &[&str] = &[
    "near the river",
    "in the morning",
    "at the market",
    "every day",
    "under the old tree",
    "after dinner",
    "quietly",
    "loudly",
    "again",
    "at night",
];
const OBJECTS: &[(&str, &str)] = &[
    ("key", "keys"),
    ("box", "boxes"),
    ("coin", "coins"),
    ("book", "books"),
    ("cup", "cups"),
    ("ring", "rings"),
    ("lamp", "lamps"),
    ("hat", "hats"),
    ("bag", "bags"),
    ("stone", "stones"),
    ("apple", "apples"),
    ("shell", "shells"),
];
const PLACES: &[&str] = &[
    "garden", "kitchen", "forest", "market", "river", "library", "tower", "field", "cellar",
    "harbor",
];
const NUMBERS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
];
const ONSETS: &[&str] = &[
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "st",
    "th", "w",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "or"];
const CODAS: &[&str] = &["", "", "", "n", "l", "r", "s", "m"];
const TOWN_ENDS: &[&str] = &["ford", "ton", "dale", "wick", "moor", "by", "field", "port"];

/// People in a world: enough to need memorising, few enough that each recurs often.
const PEOPLE: usize = 48;
const CITIES: usize = 12;

/// A recurring person; every attribute is fixed for the world's seed.
#[derive(Debug, Clone)]
struct Person {
    name: String,
    she: bool,
    city: usize,
    job: usize,
    pet: usize,
    pet_name: String,
    color: usize,
    /// 2..=9, the "lucky number" a person counts to.
    number: usize,
    /// Index of the best friend (another person).
    friend: usize,
}

/// The fixed facts of a corpus: people and towns, drawn from the seed.
#[derive(Debug, Clone)]
struct World {
    people: Vec<Person>,
    cities: Vec<String>,
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn syllable(rng: &mut Rng, coda: bool) -> String {
    let mut s = String::new();
    s.push_str(rng.pick(ONSETS));
    s.push_str(rng.pick(VOWELS));
    if coda {
        s.push_str(rng.pick(CODAS));
    }
    s
}

/// Draws distinct capitalised names from `make`.
fn distinct(
    rng: &mut Rng,
    n: usize,
    taken: &mut std::collections::HashSet<String>,
    make: fn(&mut Rng) -> String,
) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let name = capitalize(&make(rng));
        if taken.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

impl World {
    fn new(seed: u64) -> Self {
        // A separate stream for the world, so a story's draws never shift the facts.
        let mut rng = Rng::new(seed ^ 0x5EED_0F30_11D0);
        let mut taken = std::collections::HashSet::new();
        let names = distinct(&mut rng, PEOPLE, &mut taken, |r| {
            syllable(r, true) + &syllable(r, false)
        });
        let pet_names = distinct(&mut rng, PEOPLE, &mut taken, |r| syllable(r, false) + "y");
        let cities = distinct(&mut rng, CITIES, &mut taken, |r| {
            syllable(r, true) + r.pick(TOWN_ENDS)
        });
        let people = names
            .into_iter()
            .zip(pet_names)
            .enumerate()
            .map(|(i, (name, pet_name))| Person {
                name,
                she: rng.chance(50),
                city: rng.below(CITIES),
                job: rng.below(JOBS.len()),
                pet: rng.below(PETS.len()),
                pet_name,
                color: rng.below(COLORS.len()),
                number: rng.range(2, 9),
                // Anyone but oneself.
                friend: (i + 1 + rng.below(PEOPLE - 1)) % PEOPLE,
            })
            .collect();
        Self { people, cities }
    }
}

/// Writes one story, counting words; `cap` capitalises the next word (sentence start).
struct Story<'a> {
    out: &'a mut String,
    words: u64,
    cap: bool,
}

impl Story<'_> {
    /// One word (no spaces inside), preceded by a space unless it starts the story.
    fn w(&mut self, word: &str) {
        if self.words > 0 {
            self.out.push(' ');
        }
        if self.cap {
            let mut c = word.chars();
            if let Some(f) = c.next() {
                self.out.push(f.to_ascii_uppercase());
                self.out.push_str(c.as_str());
            }
            self.cap = false;
        } else {
            self.out.push_str(word);
        }
        self.words += 1;
    }

    /// Several space-separated words.
    fn ws(&mut self, words: &str) {
        for word in words.split(' ') {
            self.w(word);
        }
    }

    /// Punctuation or a suffix glued to the previous word (`.`, `,`, `'s`).
    fn p(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// Ends a sentence.
    fn end(&mut self, mark: &str) {
        self.out.push_str(mark);
        self.cap = true;
    }
}

/// Generates one story at a time from a world and a seeded stream.
struct Generator {
    world: World,
    rng: Rng,
}

impl Generator {
    /// A noun phrase of `plural` number with up to `depth` nested relative clauses.
    fn np(&mut self, s: &mut Story, plural: bool, depth: u32) {
        s.w("the");
        if self.rng.chance(25) {
            s.w(self.rng.pick(ADJS));
        }
        let noun = self.rng.pick(NOUNS);
        s.w(if plural { noun.1 } else { noun.0 });
        if depth > 0 && self.rng.chance(60) {
            s.w("that");
            let inner = self.rng.chance(50);
            let verb = self.rng.pick(TVERBS);
            if self.rng.chance(50) {
                // Subject relative: the verb agrees with the head noun.
                s.w(if plural { verb.1 } else { verb.0 });
                self.np(s, inner, depth - 1);
            } else {
                // Object relative: the verb agrees with the inner subject.
                self.np(s, inner, depth - 1);
                s.w(if inner { verb.1 } else { verb.0 });
            }
        }
    }

    /// "The dogs that the farmer feeds sleep near the river."
    fn agreement(&mut self, s: &mut Story) {
        let plural = self.rng.chance(50);
        let depth = [0, 0, 1, 1, 1, 2][self.rng.below(6)];
        self.np(s, plural, depth);
        match self.rng.below(20) {
            0..=7 => {
                let v = self.rng.pick(IVERBS);
                s.w(if plural { v.1 } else { v.0 });
                s.ws(self.rng.pick(ADVERBIALS));
            }
            8..=14 => {
                let v = self.rng.pick(TVERBS);
                s.w(if plural { v.1 } else { v.0 });
                let object_plural = self.rng.chance(50);
                self.np(s, object_plural, 0);
            }
            _ => {
                s.w(if plural { "are" } else { "is" });
                s.w(self.rng.pick(ADJS));
            }
        }
        s.end(".");
    }

    /// The subject for person `i`: the name, or the pronoun when `pronoun`.
    fn subject(&self, s: &mut Story, i: usize, pronoun: bool) {
        let p = &self.world.people[i];
        if pronoun {
            s.w(if p.she { "she" } else { "he" });
        } else {
            s.w(&p.name);
        }
    }

    fn possessive(&self, s: &mut Story, i: usize, pronoun: bool) {
        let p = &self.world.people[i];
        if pronoun {
            s.w(if p.she { "her" } else { "his" });
        } else {
            s.w(&p.name);
            s.p("'s");
        }
    }

    /// A fixed fact about person `i` ("Mira lives in Dunford.").
    fn fact(&mut self, s: &mut Story, i: usize, pronoun: bool) {
        let p = self.world.people[i].clone();
        match self.rng.below(6) {
            0 => {
                self.subject(s, i, pronoun);
                s.ws("lives in");
                s.w(&self.world.cities[p.city]);
            }
            1 => {
                self.subject(s, i, pronoun);
                s.ws("works as a");
                s.w(JOBS[p.job]);
            }
            2 => {
                self.subject(s, i, pronoun);
                s.ws("has a");
                s.w(PETS[p.pet].0);
                s.w("named");
                s.w(&p.pet_name);
            }
            3 => {
                self.possessive(s, i, pronoun);
                s.ws("favorite color is");
                s.w(COLORS[p.color]);
            }
            4 => {
                self.possessive(s, i, pronoun);
                s.ws("best friend is");
                s.w(&self.world.people[p.friend].name);
            }
            _ => {
                self.possessive(s, i, pronoun);
                s.ws("lucky number is");
                s.w(NUMBERS[p.number]);
            }
        }
        s.end(".");
    }

    /// A question about person `i` and its answer from the world's facts.
    fn question(&mut self, s: &mut Story, i: usize) {
        let p = self.world.people[i].clone();
        match self.rng.below(4) {
            0 => {
                s.ws("where does");
                s.w(&p.name);
                s.w("live");
                s.end("?");
                self.subject(s, i, true);
                s.ws("lives in");
                s.w(&self.world.cities[p.city]);
            }
            1 => {
                s.ws("what does");
                s.w(&p.name);
                s.w("do");
                s.end("?");
                self.subject(s, i, true);
                s.ws("works as a");
                s.w(JOBS[p.job]);
            }
            2 => {
                s.ws("what is the name of");
                s.w(&p.name);
                s.p("'s");
                s.w(PETS[p.pet].0);
                s.end("?");
                s.ws("it is");
                s.w(&p.pet_name);
            }
            _ => {
                s.ws("who is");
                s.w(&p.name);
                s.p("'s");
                s.ws("best friend");
                s.end("?");
                s.ws("it is");
                s.w(&self.world.people[p.friend].name);
            }
        }
        s.end(".");
    }

    /// "Mira counted the apples: one, two, three. Mira had three apples."
    fn counting(&mut self, s: &mut Story, i: usize) {
        let n = if self.rng.chance(60) {
            self.world.people[i].number
        } else {
            self.rng.range(2, 9)
        };
        let object = self.rng.pick(OBJECTS);
        self.subject(s, i, false);
        s.ws("counted the");
        s.w(object.1);
        s.p(":");
        for (k, word) in NUMBERS.iter().enumerate().take(n + 1).skip(1) {
            s.w(word);
            s.p(if k == n { "." } else { "," });
        }
        s.cap = true;
        self.subject(s, i, true);
        s.w("had");
        s.w(NUMBERS[n]);
        s.w(object.1);
        s.end(".");
    }

    /// "The numbers went up: 4, 7, 10, 13." (or down).
    fn sequence(&mut self, s: &mut Story) {
        let step = self.rng.range(1, 3);
        let len = self.rng.range(4, 7);
        let up = self.rng.chance(50);
        let start = if up {
            self.rng.range(1, 20)
        } else {
            self.rng.range(step * (len - 1) + 1, step * (len - 1) + 20)
        };
        s.ws("the numbers went");
        s.w(if up { "up" } else { "down" });
        s.p(":");
        for k in 0..len {
            let v = if up {
                start + k * step
            } else {
                start - k * step
            };
            s.w(&v.to_string());
            s.p(if k + 1 == len { "." } else { "," });
        }
        s.cap = true;
    }

    /// "Mira visits Tolan in Dunford." (the friend's city is a fact to remember).
    fn visit(&mut self, s: &mut Story, i: usize) {
        let friend = self.world.people[i].friend;
        self.subject(s, i, false);
        s.w("visits");
        s.w(&self.world.people[friend].name.clone());
        s.w("in");
        s.w(&self.world.cities[self.world.people[friend].city].clone());
        s.end(".");
        s.w(&self.world.people[i].name.clone());
        s.w("and");
        s.w(&self.world.people[friend].name.clone());
        let v = self.rng.pick(IVERBS);
        s.w(v.1);
        s.ws(self.rng.pick(ADVERBIALS));
        s.end(".");
    }

    /// One story about a main person and their friend.
    fn story(&mut self, s: &mut Story) {
        let main = self.rng.below(PEOPLE);
        let friend = self.world.people[main].friend;
        s.cap = true;
        self.fact(s, main, false);
        // The long-range reference: set up now, recalled at the end.
        let color = self.rng.below(COLORS.len());
        let object = self.rng.below(OBJECTS.len());
        let place = self.rng.below(PLACES.len());
        self.subject(s, main, true);
        s.ws("found a");
        s.w(COLORS[color]);
        s.w(OBJECTS[object].0);
        s.ws("in the");
        s.w(PLACES[place]);
        s.end(".");
        let mut last = Some(main);
        for _ in 0..self.rng.range(4, 10) {
            match self.rng.below(20) {
                0..=6 => {
                    self.agreement(s);
                    last = None;
                }
                7..=10 => {
                    let who = if self.rng.chance(70) { main } else { friend };
                    let pronoun = last == Some(who) && self.rng.chance(50);
                    self.fact(s, who, pronoun);
                    last = Some(who);
                }
                11..=12 => {
                    let who = if self.rng.chance(70) { main } else { friend };
                    self.question(s, who);
                    last = Some(who);
                }
                13..=14 => {
                    self.counting(s, main);
                    last = Some(main);
                }
                15..=16 => {
                    self.sequence(s);
                    last = None;
                }
                _ => {
                    self.visit(s, main);
                    last = None;
                }
            }
        }
        s.w("later");
        s.p(",");
        self.subject(s, main, false);
        s.ws("went back to the");
        s.w(PLACES[place]);
        s.ws("with the");
        s.w(COLORS[color]);
        s.w(OBJECTS[object].0);
        s.end(".");
    }
}

/// The synthetic task names, in the order [`tasks`] returns them.
pub const TASKS: [&str; 4] = ["agreement", "attributes", "counting", "recall"];

/// Draws `k` distinct indices below `n` other than `not`, for distractors.
fn others(rng: &mut Rng, n: usize, not: usize, k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(k);
    while out.len() < k {
        let j = rng.below(n);
        if j != not && !out.contains(&j) {
            out.push(j);
        }
    }
    out
}

/// One task line: the right choice is put at a drawn position among the distractors.
fn item(rng: &mut Rng, context: String, right: String, wrong: Vec<String>) -> String {
    let gold = rng.below(wrong.len() + 1);
    let mut choices = wrong;
    choices.insert(gold, right);
    serde_json::json!({ "context": context, "choices": choices, "gold": gold }).to_string()
}

/// A story's text so far, with the capitalisation state of the stories.
fn fragment(f: impl FnOnce(&mut Story)) -> String {
    let mut out = String::new();
    let mut s = Story {
        out: &mut out,
        words: 0,
        cap: true,
    };
    f(&mut s);
    out
}

/// `items` multiple-choice items of each task in [`TASKS`], as JSONL text, for the world of
/// `seed` (the people and facts of [`generate`]'s corpus for the same seed). A stream apart from
/// the corpus's draws them, so the corpus is the same with or without tasks.
pub fn tasks(seed: u64, items: usize) -> Vec<(&'static str, String)> {
    let mut g = Generator {
        world: World::new(seed),
        rng: Rng::new(seed ^ 0x7A5C_5EED_0B0E),
    };
    let mut out: Vec<(&'static str, String)> = TASKS.iter().map(|t| (*t, String::new())).collect();
    for _ in 0..items {
        // agreement: "The dogs that the farmer feeds" -> sleep | sleeps
        let plural = g.rng.chance(50);
        let depth = 1 + g.rng.below(2) as u32;
        let verb = g.rng.pick(IVERBS);
        let mut ctx = fragment(|s| g.np(s, plural, depth));
        let (right, wrong) = if plural {
            (verb.1, verb.0)
        } else {
            (verb.0, verb.1)
        };
        if ctx.is_empty() {
            ctx.push_str("The");
        }
        let line = item(&mut g.rng, ctx, right.into(), vec![wrong.into()]);
        out[0].1.push_str(&(line + "\n"));

        // attributes: "Mira lives in" -> her city among three others
        let i = g.rng.below(PEOPLE);
        let p = g.world.people[i].clone();
        let (ctx, right, wrong): (String, String, Vec<String>) = match g.rng.below(3) {
            0 => (
                format!("{} lives in", p.name),
                g.world.cities[p.city].clone(),
                others(&mut g.rng, CITIES, p.city, 3)
                    .into_iter()
                    .map(|c| g.world.cities[c].clone())
                    .collect(),
            ),
            1 => (
                format!("{} works as a", p.name),
                JOBS[p.job].into(),
                others(&mut g.rng, JOBS.len(), p.job, 3)
                    .into_iter()
                    .map(|j| JOBS[j].into())
                    .collect(),
            ),
            _ => (
                format!("{}'s favorite color is", p.name),
                COLORS[p.color].into(),
                others(&mut g.rng, COLORS.len(), p.color, 3)
                    .into_iter()
                    .map(|c| COLORS[c].into())
                    .collect(),
            ),
        };
        let line = item(&mut g.rng, ctx, right, wrong);
        out[1].1.push_str(&(line + "\n"));

        // counting: "Mira counted the cups: one, two, three. She had" -> three
        let n = g.rng.range(2, 9);
        let object = g.rng.pick(OBJECTS);
        let counted: Vec<&str> = NUMBERS[1..=n].to_vec();
        let ctx = format!(
            "{} counted the {}: {}. {} had",
            p.name,
            object.1,
            counted.join(", "),
            if p.she { "She" } else { "He" }
        );
        // Other counts from two to ten.
        let wrong = others(&mut g.rng, 9, n - 2, 3)
            .into_iter()
            .map(|k| format!("{} {}", NUMBERS[k + 2], object.1))
            .collect();
        let line = item(
            &mut g.rng,
            ctx,
            format!("{} {}", NUMBERS[n], object.1),
            wrong,
        );
        out[2].1.push_str(&(line + "\n"));

        // recall: "... found a blue key in the garden. <sentences> Later, Mira went back to the
        // garden with the" -> blue key
        let color = g.rng.below(COLORS.len());
        let object = g.rng.below(OBJECTS.len());
        let place = g.rng.below(PLACES.len());
        let filler = 2 + g.rng.below(3);
        let mut ctx = format!(
            "{} found a {} {} in the {}.",
            p.name, COLORS[color], OBJECTS[object].0, PLACES[place]
        );
        for _ in 0..filler {
            let sentence = fragment(|s| g.agreement(s));
            ctx.push(' ');
            ctx.push_str(&sentence);
        }
        ctx.push_str(&format!(
            " Later, {} went back to the {} with the",
            p.name, PLACES[place]
        ));
        // Distractors change the colour, the object, or both.
        let wrong = (0..3)
            .map(|k| {
                let c = if k != 1 {
                    others(&mut g.rng, COLORS.len(), color, 1)[0]
                } else {
                    color
                };
                let o = if k != 0 {
                    others(&mut g.rng, OBJECTS.len(), object, 1)[0]
                } else {
                    object
                };
                format!("{} {}", COLORS[c], OBJECTS[o].0)
            })
            .collect();
        let right = format!("{} {}", COLORS[color], OBJECTS[object].0);
        let line = item(&mut g.rng, ctx, right, wrong);
        out[3].1.push_str(&(line + "\n"));
    }
    out
}

/// Exactly `words` words of synthetic stories for `seed`: documents on single lines, each
/// followed by a blank line. Same (words, seed), same text; a longer corpus of the same seed
/// starts with the shorter one's complete stories.
pub fn generate(words: u64, seed: u64) -> String {
    let mut g = Generator {
        world: World::new(seed),
        rng: Rng::new(seed),
    };
    // ~6.2 bytes per word with spaces and punctuation.
    let mut text = String::with_capacity((words as usize).saturating_mul(13) / 2 + 64);
    let mut story = String::with_capacity(2048);
    let mut total = 0u64;
    while total < words {
        story.clear();
        let mut s = Story {
            out: &mut story,
            words: 0,
            cap: true,
        };
        g.story(&mut s);
        let n = s.words;
        let keep = n.min(words - total);
        if keep == n {
            text.push_str(&story);
        } else {
            // Cut the last story after `keep` words (words are separated by single spaces).
            let end = story
                .split(' ')
                .take(keep as usize)
                .map(|w| w.len() + 1)
                .sum::<usize>()
                - 1;
            text.push_str(&story[..end]);
        }
        text.push_str("\n\n");
        total += keep;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn tasks_are_deterministic_well_formed_and_true_to_the_world() {
        let a = tasks(7, 20);
        assert_eq!(a, tasks(7, 20));
        assert_ne!(a, tasks(8, 20));
        assert_eq!(a.iter().map(|t| t.0).collect::<Vec<_>>(), TASKS);
        let world = World::new(7);
        for (name, text) in &a {
            assert_eq!(text.lines().count(), 20, "{name}");
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let choices = v["choices"].as_array().unwrap();
                let gold = v["gold"].as_u64().unwrap() as usize;
                assert!(gold < choices.len() && choices.len() >= 2, "{line}");
                let distinct: HashSet<_> = choices.iter().collect();
                assert_eq!(distinct.len(), choices.len(), "{line}");
                let ctx = v["context"].as_str().unwrap();
                let right = choices[gold].as_str().unwrap();
                if *name == "attributes" && ctx.ends_with("lives in") {
                    let who = ctx.trim_end_matches(" lives in");
                    let p = world.people.iter().find(|p| p.name == who).unwrap();
                    assert_eq!(right, world.cities[p.city]);
                }
                if *name == "counting" {
                    let counted = ctx.split(": ").nth(1).unwrap().split(", ").count();
                    assert_eq!(right.split(' ').next(), Some(NUMBERS[counted]), "{line}");
                }
                if *name == "recall" {
                    assert!(ctx.contains(&format!(" {right} in the ")), "{line}");
                }
            }
        }
    }

    #[test]
    fn word_count_is_exact() {
        for &n in &[0u64, 1, 2, 7, 100, 999, 12_345] {
            let text = generate(n, 3);
            assert_eq!(text.split_whitespace().count() as u64, n, "words = {n}");
        }
        assert!(generate(0, 3).is_empty());
    }

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds() {
        assert_eq!(generate(5000, 42), generate(5000, 42));
        assert_ne!(generate(5000, 42), generate(5000, 43));
        // A longer corpus extends the shorter one (stories are generated in the same order).
        let short = generate(3000, 9);
        let long = generate(6000, 9);
        let cut = short.trim_end().rfind("\n\n").unwrap();
        assert!(long.starts_with(&short[..cut]));
    }

    #[test]
    fn documents_are_lines_separated_by_blank_lines() {
        let text = generate(20_000, 1);
        let docs = crate::split::documents(&text);
        assert!(docs.iter().all(|d| !d.contains('\n')));
        let lens: Vec<usize> = docs.iter().map(|d| d.split(' ').count()).collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!(
            (40.0..200.0).contains(&mean),
            "mean story length {mean} words"
        );
        assert!(docs
            .iter()
            .all(|d| d.chars().next().is_some_and(|c| c.is_ascii_uppercase())));
    }

    #[test]
    fn facts_are_consistent_across_the_corpus() {
        let text = generate(200_000, 5);
        let mut home: HashMap<&str, &str> = HashMap::new();
        let mut checked = 0;
        for sentence in text.split(". ") {
            let words: Vec<&str> = sentence.split(' ').collect();
            // "<Name> lives in <City>" with a name, not a pronoun or a question.
            for i in 0..words.len().saturating_sub(3) {
                if words[i + 1] == "lives"
                    && words[i + 2] == "in"
                    && words[i]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_uppercase())
                    && !matches!(words[i], "She" | "He")
                {
                    let city = words[i + 3].trim_end_matches(['.', '\n']);
                    let prev = home.insert(words[i], city);
                    assert!(
                        prev.is_none() || prev == Some(city),
                        "{} lives in {:?} and {city}",
                        words[i],
                        prev
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 100 && home.len() > 30,
            "checked {checked} facts about {} people",
            home.len()
        );
    }

    #[test]
    fn counting_sentences_count_correctly() {
        let text = generate(100_000, 8);
        let mut checked = 0;
        for part in text.split(" counted the ").skip(1) {
            // "<objects>: one, two, three. She had three <objects>."
            let Some((objects, rest)) = part.split_once(": ") else {
                continue;
            };
            let Some((list, after)) = rest.split_once(". ") else {
                continue;
            };
            let items: Vec<&str> = list.split(", ").collect();
            for (k, item) in items.iter().enumerate() {
                assert_eq!(*item, NUMBERS[k + 1]);
            }
            let mut a = after.split(' ');
            let (_, had, n, obj) = (a.next(), a.next(), a.next(), a.next());
            if obj.is_none() {
                continue; // the corpus' last story may be cut here
            }
            assert_eq!(had, Some("had"));
            assert_eq!(n, Some(NUMBERS[items.len()]));
            assert_eq!(obj.map(|o| o.trim_end_matches(['.', '\n'])), Some(objects));
            checked += 1;
        }
        assert!(checked > 50, "checked {checked}");
    }

    #[test]
    fn simple_subjects_agree_with_their_verbs() {
        let singular: HashSet<&str> = NOUNS.iter().map(|n| n.0).collect();
        let plural: HashSet<&str> = NOUNS.iter().map(|n| n.1).collect();
        let verbs_sg: HashSet<&str> = IVERBS
            .iter()
            .chain(TVERBS)
            .map(|v| v.0)
            .chain(["is"])
            .collect();
        let verbs_pl: HashSet<&str> = IVERBS
            .iter()
            .chain(TVERBS)
            .map(|v| v.1)
            .chain(["are"])
            .collect();
        let text = generate(100_000, 11);
        let (mut agree, mut checked) = (0, 0);
        for sentence in text.split(". ") {
            let w: Vec<&str> = sentence.trim().split(' ').collect();
            // "The [adj] noun verb ..." with no relative clause: the noun's next word is the verb.
            if w.first() != Some(&"The") || w.len() < 4 {
                continue;
            }
            let k = if singular.contains(w[1]) || plural.contains(w[1]) {
                1
            } else {
                2
            };
            let (noun, verb) = (w[k], w[k + 1]);
            if verb == "that" || !(singular.contains(noun) || plural.contains(noun)) {
                continue;
            }
            checked += 1;
            if (singular.contains(noun) && verbs_sg.contains(verb))
                || (plural.contains(noun) && verbs_pl.contains(verb))
            {
                agree += 1;
            }
        }
        assert!(checked > 500, "checked {checked}");
        assert_eq!(agree, checked);
    }

    #[test]
    fn long_range_reference_repeats_the_setup() {
        let text = generate(50_000, 2);
        let docs = crate::split::documents(&text);
        let mut checked = 0;
        for d in &docs[..docs.len() - 1] {
            // "... found a <color> <object> in the <place>. ... went back to the <place> with the <color> <object>."
            let found = d.split(" found a ").nth(1).unwrap();
            let f: Vec<&str> = found.split(' ').take(5).collect();
            let back = d.rsplit(" went back to the ").next().unwrap();
            let b: Vec<&str> = back.split(' ').collect();
            assert_eq!(b[0], f[4].trim_end_matches('.'));
            assert_eq!((b[3], b[4].trim_end_matches('.')), (f[0], f[1]));
            checked += 1;
        }
        assert!(checked > 100);
    }
}
