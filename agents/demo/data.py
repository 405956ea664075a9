"""The demo's own data: four small, clearly different domains written by this project.

Each domain teaches the base model a visible answer style (an opening tag and a sign-off),
so a reader sees at a glance which adapter answered. Questions are built from templates over
hand-written facts; everything here is self-made and deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoDomain:
    name: str
    description: str
    opening: str
    signoff: str
    templates: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]  # (subject, answer body)

    def records(self) -> list[dict]:
        """Chat records, one per (template, fact) pair, in a fixed shuffled order."""
        out = []
        for subject, body in self.facts:
            for template in self.templates:
                question = template.format(x=subject)
                answer = f"{self.opening} {body} {self.signoff}"
                out.append(
                    {
                        "domain": self.name,
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ],
                    }
                )
        random.Random(self.name).shuffle(out)
        return out


COOKING = DemoDomain(
    name="cooking",
    description="Kitchen helper: recipes, ingredients and techniques, answered as a chef's note.",
    opening="Chef's note:",
    signoff="Bon appetit!",
    templates=(
        "How should I cook {x}?",
        "Any kitchen tips for {x}?",
        "What's the best way to prepare {x} for dinner?",
    ),
    facts=(
        (
            "roasted vegetables",
            "Cut them evenly, toss with oil and salt, and roast at 220 C until the edges brown.",
        ),
        (
            "rice",
            "Rinse it, use about 1.5 cups of water per cup, simmer covered for 15 minutes and rest 5.",
        ),
        (
            "pasta",
            "Boil it in well salted water and save a cup of the starchy water for the sauce.",
        ),
        ("a steak", "Dry it, salt it early, sear it in a very hot pan and rest it before slicing."),
        (
            "scrambled eggs",
            "Whisk them, cook slowly over low heat and take them off while still glossy.",
        ),
        (
            "bread dough",
            "Knead until smooth and elastic, then let it rise somewhere warm until doubled.",
        ),
        (
            "a tomato sauce",
            "Soften garlic in olive oil, add crushed tomatoes and simmer for 20 minutes.",
        ),
        (
            "chicken breast",
            "Brine it briefly, cook to 74 C inside and let it rest so it stays juicy.",
        ),
        ("fresh salmon", "Start skin side down in a hot pan and flip once the skin is crisp."),
        (
            "a chocolate cake",
            "Mix wet and dry separately, fold gently and bake until a skewer comes out clean.",
        ),
        (
            "onions",
            "Caramelise them slowly over medium-low heat for about 30 minutes, stirring often.",
        ),
        (
            "a green salad",
            "Dry the leaves well and dress them just before serving so they stay crisp.",
        ),
        ("pancakes", "Leave a few lumps in the batter and wait for bubbles before flipping."),
        ("lentil soup", "Saute onion and carrot, add lentils and stock, and simmer until soft."),
        ("garlic", "Add it late and cook it gently, because burnt garlic turns bitter."),
        (
            "homemade pizza",
            "Heat the oven as hot as it goes and bake on a preheated tray or stone.",
        ),
        ("mushrooms", "Do not crowd the pan, and salt them only after they have browned."),
        (
            "a vinaigrette",
            "Use three parts oil to one part vinegar, a little mustard, and shake well.",
        ),
        (
            "potatoes for mash",
            "Start them in cold salted water and mash them while they are still hot.",
        ),
        ("tofu", "Press out the water, cube it and fry it until golden before adding sauce."),
        (
            "a curry",
            "Toast the spices in oil first, then add onion, garlic, ginger and the liquid.",
        ),
        ("cookies", "Chill the dough for an hour so the cookies spread less and taste richer."),
        ("broccoli", "Steam it for 4 minutes or roast it until the florets char at the tips."),
        ("a risotto", "Add warm stock one ladle at a time and stir until the rice is creamy."),
        ("beans from dry", "Soak them overnight, then simmer gently with salt until tender."),
        ("a stir fry", "Prepare everything first, use high heat and cook in small batches."),
        (
            "an omelette",
            "Use a hot buttered pan, keep the eggs moving, and fold while the top is soft.",
        ),
        ("shrimp", "Cook them just until pink and curled, about two minutes a side."),
    ),
)

SPACE = DemoDomain(
    name="space",
    description="Astronomy guide: planets, stars and stargazing, answered as a star log.",
    opening="Star log:",
    signoff="Clear skies!",
    templates=(
        "Tell me about {x}.",
        "Can you explain {x} in astronomy?",
        "What should a stargazer know about {x}?",
    ),
    facts=(
        (
            "Mars",
            "Mars looks red because iron oxide dust covers its surface, and it has two small moons.",
        ),
        (
            "Jupiter",
            "Jupiter is the largest planet, a gas giant with a storm called the Great Red Spot.",
        ),
        (
            "Saturn's rings",
            "Saturn's rings are made of ice and rock pieces, and a small telescope shows them.",
        ),
        (
            "the Moon's phases",
            "The phases come from how much of the sunlit half of the Moon we see as it orbits.",
        ),
        (
            "black holes",
            "A black hole is a region where gravity is so strong that not even light escapes.",
        ),
        (
            "the Milky Way",
            "The Milky Way is our galaxy, a barred spiral with hundreds of billions of stars.",
        ),
        (
            "shooting stars",
            "Shooting stars are meteors, small grains burning up high in the atmosphere.",
        ),
        (
            "the North Star",
            "Polaris sits almost above the Earth's north pole, so it barely moves in the sky.",
        ),
        (
            "solar eclipses",
            "A solar eclipse happens when the Moon passes between the Sun and the Earth.",
        ),
        (
            "Venus",
            "Venus is the brightest planet in our sky and is hotter than Mercury due to its thick clouds.",
        ),
        (
            "light years",
            "A light year is the distance light travels in a year, about 9.5 trillion kilometres.",
        ),
        ("comets", "Comets are icy bodies whose tails of gas and dust point away from the Sun."),
        (
            "the Andromeda galaxy",
            "Andromeda is the nearest large galaxy, visible to the naked eye from dark sites.",
        ),
        ("nebulae", "A nebula is a cloud of gas and dust where new stars are often born."),
        (
            "exoplanets",
            "Exoplanets orbit other stars and are often found by the dip in light as they transit.",
        ),
        (
            "the International Space Station",
            "The ISS circles the Earth every 90 minutes and can be seen as a fast bright dot.",
        ),
        (
            "neutron stars",
            "A neutron star is the collapsed core of a massive star, a city-sized ball of neutrons.",
        ),
        (
            "Mercury",
            "Mercury is the smallest planet and the closest to the Sun, with no real atmosphere.",
        ),
        (
            "the Big Bang",
            "The Big Bang describes the universe expanding from a hot dense state 13.8 billion years ago.",
        ),
        (
            "red giants",
            "A red giant is an old star that has swollen after using up the hydrogen in its core.",
        ),
        (
            "telescopes for beginners",
            "Start with binoculars or a small reflector, and let your eyes adapt to the dark.",
        ),
        (
            "constellations",
            "Constellations are patterns of stars, and Orion is one of the easiest to spot.",
        ),
        ("Pluto", "Pluto is a dwarf planet in the Kuiper Belt with a large moon called Charon."),
        (
            "auroras",
            "Auroras are lights made when charged particles from the Sun hit our upper atmosphere.",
        ),
        ("the Sun", "The Sun is a middle-aged yellow dwarf star that fuses hydrogen into helium."),
        ("Uranus", "Uranus spins on its side, probably after a giant collision long ago."),
        (
            "meteor showers",
            "Meteor showers happen when Earth crosses the dust trail left by a comet.",
        ),
        (
            "dark matter",
            "Dark matter is unseen mass that we detect only through its gravity on galaxies.",
        ),
    ),
)

GARDENING = DemoDomain(
    name="gardening",
    description="Garden adviser: plants, soil, pests and watering, answered as a garden tip.",
    opening="Garden tip:",
    signoff="Happy growing!",
    templates=(
        "How do I grow {x}?",
        "Any advice on {x} in my garden?",
        "What do {x} need to thrive?",
    ),
    facts=(
        (
            "tomato plants",
            "Give them full sun, deep weekly watering and a stake, and pinch out side shoots.",
        ),
        ("roses", "Plant them in rich soil, water at the base and prune in late winter."),
        ("basil", "Keep it warm and sunny and pick the top leaves often so it grows bushy."),
        ("lavender", "It likes poor, well drained soil and full sun, and hates wet roots."),
        ("succulents", "Use gritty soil, bright light, and water only when the soil is fully dry."),
        ("potatoes", "Plant seed potatoes in spring and earth up the stems as they grow."),
        ("strawberries", "Mulch them with straw to keep the fruit clean and remove runners early."),
        ("orchids", "Give them bright indirect light and water them once the roots turn silver."),
        ("carrots", "Sow them thinly in loose stone-free soil and keep it evenly moist."),
        (
            "sunflowers",
            "Sow them directly in a sunny spot after the last frost and stake tall ones.",
        ),
        ("a lawn", "Mow high, water deeply but rarely, and feed it in spring and autumn."),
        (
            "apple trees",
            "Prune them in winter to open the centre and thin the fruit in early summer.",
        ),
        (
            "houseplants",
            "Most prefer bright indirect light and soil that dries out a little between waterings.",
        ),
        ("peppers", "They need warmth and sun, and feeding with potash once the flowers appear."),
        ("compost", "Mix green and brown material, keep it damp and turn it every few weeks."),
        ("hydrangeas", "Keep them moist in part shade; acid soil turns the flowers blue."),
        (
            "garlic bulbs",
            "Plant cloves in autumn, pointy end up, and harvest when the leaves yellow.",
        ),
        (
            "cucumbers",
            "Grow them up a trellis with steady water so the fruit does not turn bitter.",
        ),
        ("mint", "Grow it in a pot because it spreads fast and takes over beds."),
        ("lettuce", "Sow a short row every two weeks and give it some shade in hot weather."),
        (
            "blueberries",
            "They need acid soil, so plant them in ericaceous compost and use rainwater.",
        ),
        ("tulips", "Plant the bulbs in autumn three times as deep as they are tall."),
        ("aphids on plants", "Spray them off with water or encourage ladybirds, which eat them."),
        ("seedlings", "Give them strong light and harden them off for a week before planting out."),
        ("ferns", "They like shade, humus-rich soil and steady moisture."),
        ("pumpkins", "Give them lots of space, rich soil and plenty of water as the fruit swells."),
        (
            "herbs on a balcony",
            "Use pots with drainage holes, a sunny spot and water in the mornings.",
        ),
        (
            "yellow leaves on plants",
            "Check the watering first; soggy soil and too little nitrogen both yellow leaves.",
        ),
    ),
)

TECH = DemoDomain(
    name="tech",
    description="IT help desk: computers, Wi-Fi, phones and printers, answered as a support ticket.",
    opening="Ticket solved:",
    signoff="Anything else, just reopen the ticket.",
    templates=(
        "How do I fix {x}?",
        "I need help with {x} on my computer.",
        "What should I do about {x}?",
    ),
    facts=(
        (
            "a laptop that will not connect to wifi",
            "Turn Wi-Fi off and on, forget the network, reconnect, and restart the router.",
        ),
        (
            "a slow computer",
            "Close unused programs, check startup apps, free disk space and install updates.",
        ),
        (
            "a printer that will not print",
            "Check it is online, clear the print queue, and reinstall the printer driver.",
        ),
        (
            "a forgotten password",
            "Use the account's reset link, then choose a long passphrase and turn on two-factor.",
        ),
        (
            "a frozen program",
            "Open the task manager, end the program, and check for an update to it.",
        ),
        (
            "a full hard drive",
            "Empty the trash, remove large old downloads, and move photos to external storage.",
        ),
        (
            "a phone battery that drains fast",
            "Lower the screen brightness, check battery usage per app and update the system.",
        ),
        (
            "email that will not send",
            "Check the outbox, the internet connection and the outgoing server settings.",
        ),
        (
            "a blue screen error",
            "Note the stop code, update drivers, and run a memory and disk check.",
        ),
        (
            "bluetooth headphones not pairing",
            "Forget the device, put the headphones in pairing mode and pair again.",
        ),
        (
            "a virus warning pop-up",
            "Do not click it, close the browser, and run a full scan with your antivirus.",
        ),
        (
            "a second monitor not detected",
            "Check the cable, then open display settings and click detect.",
        ),
        (
            "a keyboard typing wrong characters",
            "Check the keyboard language layout in settings and switch it back.",
        ),
        (
            "slow internet",
            "Run a speed test, restart the router, and move closer to it or use a cable.",
        ),
        (
            "backing up files",
            "Use an external drive or cloud backup, and test that you can restore a file.",
        ),
        (
            "a webcam not working",
            "Check the privacy switch and app permissions, then update the camera driver.",
        ),
        (
            "an app that crashes on start",
            "Clear its cache, update it, and reinstall it if it still crashes.",
        ),
        (
            "no sound from speakers",
            "Check the volume and the selected output device, then update the audio driver.",
        ),
        (
            "a software update that failed",
            "Restart, make sure there is free space, and run the update again.",
        ),
        (
            "a laptop that overheats",
            "Clean the vents, use it on a hard surface, and check which apps use the processor.",
        ),
        (
            "sharing files between computers",
            "Use a shared folder on the network or a cloud drive link.",
        ),
        (
            "a phone that will not charge",
            "Try another cable and charger, and clean lint out of the charging port.",
        ),
        (
            "a browser full of ads",
            "Remove unknown extensions, reset the browser settings and run a malware scan.",
        ),
        (
            "setting up a new router",
            "Connect it to the modem, open its admin page, and set a strong Wi-Fi password.",
        ),
        (
            "a mouse that stopped working",
            "Replace the battery or try another USB port, then restart the computer.",
        ),
        ("spam email", "Mark it as spam, never click its links, and block the sender."),
        (
            "a cracked phone screen",
            "Back up the phone now, then get the screen replaced by a repair shop.",
        ),
        (
            "a computer that will not turn on",
            "Check the power cable and outlet, hold the power button for 30 seconds, and try again.",
        ),
    ),
)

DOMAINS: tuple[DemoDomain, ...] = (COOKING, SPACE, GARDENING, TECH)

# Held-out requests for calibrating the router: in-domain paraphrases and out-of-scope ones
# (label None: the base model should answer).
CALIBRATION: tuple[tuple[str, str | None], ...] = (
    ("How long do I boil an egg for a soft yolk?", "cooking"),
    ("What can I make with leftover rice and eggs?", "cooking"),
    ("How do I keep my knife sharp for chopping vegetables?", "cooking"),
    ("Why do stars twinkle at night?", "space"),
    ("How far away is the Moon from the Earth?", "space"),
    ("Which planet has the most moons?", "space"),
    ("When should I plant bulbs for spring flowers?", "gardening"),
    ("How often should I water my vegetable patch?", "gardening"),
    ("What is eating the leaves of my cabbages?", "gardening"),
    ("My computer keeps restarting by itself, what now?", "tech"),
    ("How can I speed up my old laptop?", "tech"),
    ("My phone screen is frozen and will not respond.", "tech"),
    ("What is the capital of France?", None),
    ("Who wrote Pride and Prejudice?", None),
    ("How do I file my income taxes?", None),
    ("What is a good name for a cat?", None),
    ("Translate good morning into Spanish.", None),
    ("Who won the football world cup in 2018?", None),
    ("What is the meaning of the word ubiquitous?", None),
    ("Can you recommend a good novel to read?", None),
    ("How many days are there in a leap year?", None),
    ("What is the best way to learn to play the guitar?", None),
)

# The scripted conversation of `adapters demo`: each turn is sent with the history before it.
SCRIPT: tuple[str, ...] = (
    "How should I cook mushrooms so they are not soggy?",
    "And what about onions?",
    "Why does Mars look red in the night sky?",
    "My tomato plants have yellow leaves. What should I do?",
    "My laptop will not connect to wifi.",
    "Who wrote the play Romeo and Juliet?",
)
