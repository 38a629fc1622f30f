"""The embedded default data set: seeded, synthetic bank support messages and triage notes.

The product's main job (federated fine-tuning of a text classifier across institutions) must
run with no network and without shipping third-party data. This module writes that data: bank
customer-support messages and hospital triage notes, one label each, spread over several
institutions whose label mixes differ (a Dirichlet draw per institution) and whose sizes differ.

Texts are filled from templates and vocabulary lists, with occasional typos, and a share of them
carry PII-like strings (e-mails, phone numbers, Luhn-valid card numbers, mod-97-valid IBANs,
account numbers, dates of birth, names from :data:`SYNTHETIC_PERSON_NAMES`). All of it is
fictional: phone numbers come from ranges reserved for drama, e-mail domains are
``example.*``. Which PII was inserted, and the exact strings, are kept so that the redactor can
be tested against the generator.

Everything is drawn from one ``random.Random(seed)``: the same config gives byte-identical
output.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from client.data_loading import DataConfig
from client.redaction import PII_KINDS
from privacy.durable_io import atomic_writer

DOMAINS: tuple[str, ...] = ("bank", "hospital")
COLUMNS: tuple[str, ...] = ("id", "text", "label", "institution", "domain", "pii")

# (kind, raw string as it appears in the text)
PiiInsertion = tuple[str, str]

# ---------------------------------------------------------------------------------- labels

_BANK_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "card_lost_or_stolen": (
        "I think I lost my {card_type} {when}, I last used it at {merchant}. Can you block it "
        "and send a new one?",
        "My wallet was stolen {place} {when} and my {card_type} was in it. Please cancel the "
        "card straight away.",
        "can't find my card anywhere since {when}. I've frozen it in {channel} but I need a "
        "replacement.",
        "My bag got snatched {place} with my {card_type} inside. I need the card stopped before "
        "anyone uses it.",
        "Left my {card_type} in a cash machine {when} and it's gone. How do I order a "
        "replacement card?",
        "Card missing since {when}, no strange payments yet as far as I can see. Please cancel "
        "it and post a new one out.",
        "I dropped my card somewhere between {merchant} and home. Is it enough to freeze it or "
        "do I need a new card number?",
        "Someone stole my phone and my {card_type} {place}. Please block the card, I can't get "
        "into {channel} either.",
    ),
    "card_payment_declined": (
        "My {card_type} was declined at {merchant} {when} even though I have enough money. "
        "What's going on?",
        "Tried to pay {amount} {place} and the payment keeps getting declined. The card isn't "
        "frozen in {channel}.",
        "Why does my card keep getting declined online? I've tried {merchant} three times today.",
        "Card refused at the till {when}, really embarrassing. The balance shows {amount} "
        "available.",
        "Contactless isn't working and chip and pin just says declined. Is there a block on my "
        "{card_type}?",
        "I'm abroad and my {card_type} gets declined in every shop. I did tell {channel} I was "
        "travelling.",
        "A payment of {amount} to {merchant} failed with 'transaction declined', can you tell "
        "me why?",
    ),
    "transfer_not_received": (
        "I sent {amount} to {payee} {when} and they still haven't received it. It shows as "
        "completed on my side.",
        "The transfer I made {when} hasn't arrived after {wait}. Where is my money?",
        "My salary of {amount} was due {when} but nothing has come in yet. My employer says "
        "they sent it.",
        "Money sent to {payee} {when} is still pending after {wait}. Can you trace the payment?",
        "I'm expecting an international transfer of {amount} that was sent {when}. The sender "
        "says it left their bank but I can't see it.",
        "Faster payment to {payee} hasn't gone through, it's been {wait}. They say nothing has "
        "arrived.",
        "Transfer stuck on processing since {when}. I need the {amount} to reach {payee} today.",
    ),
    "refund_request": (
        "I returned an order to {merchant} {when} and still haven't had the {amount} refund. "
        "Can you chase it?",
        "{merchant} charged me twice for the same order, {amount} each time. I'd like one of "
        "them refunded.",
        "I cancelled my {merchant} subscription but was charged {amount} again {when}. Please "
        "refund it.",
        "The refund from {merchant} was promised within 5 days but it's been {wait}. Can you "
        "raise a chargeback?",
        "Paid {amount} on my {card_type} for a flight that got cancelled. The airline won't "
        "refund me, can the bank help?",
        "Got charged {amount} by {merchant} for an item that never arrived. How do I get my "
        "money back?",
        "I'm requesting a refund for a payment of {amount} to {merchant} {when}, the goods were "
        "faulty.",
    ),
    "account_locked": (
        "I'm locked out of {channel} after entering the wrong passcode too many times. How do "
        "I get back in?",
        "My account has been blocked and I can't log in since {when}. I haven't done anything "
        "unusual.",
        "The app says my account is suspended for security reasons. I need access to pay my "
        "rent this week.",
        "Can't log in, it keeps saying my details are incorrect and now I'm locked out. Please "
        "unlock my account.",
        "I got a message that my account was frozen pending verification. What documents do "
        "you need?",
        "Locked out of {channel} since {when}. The reset link never arrives.",
        "My account has been restricted and my card won't work either. Nobody has told me why.",
    ),
    "loan_or_mortgage_question": (
        "I'd like to know what rate I could get on a {loan} of {loan_amount} over {term}.",
        "My fixed rate on the {loan} ends {when_future}. What are my options for switching?",
        "Can I overpay my {loan} without an early repayment charge? I'd like to pay off "
        "{loan_amount} this year.",
        "Is it possible to take a payment holiday on my {loan}? Money is tight at the moment.",
        "How long does a {loan} application usually take to get a decision? I applied {when}.",
        "What's the most I could borrow on a {loan}? Our combined income is about {salary} a year.",
        "I missed a {loan} payment {when} because of a card problem. Will this affect my "
        "credit score?",
    ),
    "fraud_report": (
        "There's a payment of {amount} to {merchant} {when} that I didn't make. I think my "
        "card has been compromised.",
        "Someone called saying they were from the bank and I moved {amount} to a 'safe "
        "account'. I now think it was a scam.",
        "Several transactions I don't recognise appeared on my {card_type} overnight, all "
        "around {amount}. Please stop them.",
        "I clicked a link in a text about a parcel and entered my card details. Now there are "
        "payments I didn't authorise.",
        "Someone has set up a new payee on my account and sent {amount} out. It wasn't me.",
        "Unauthorised transactions at {merchant} {place}, I've never been there. I still have "
        "my card with me.",
        "I think I've been scammed, I paid {amount} for a car online and the seller has "
        "vanished. Can you recall the transfer?",
    ),
    "fee_dispute": (
        "Why have I been charged a {fee} of {amount}? Nobody told me about this.",
        "I was charged {amount} as a {fee} {when} but I never went overdrawn. Please refund "
        "the fee.",
        "There's a {fee} on my statement for a card payment in euros, I thought my card had no "
        "foreign fees.",
        "You've charged me a {fee} three months running. I want these charges reversed.",
        "I disagree with the {fee} of {amount} taken {when}, the payment was only a day late "
        "because your app was down.",
        "Can you explain the {amount} charge on my statement? It just says {fee}.",
    ),
    "change_contact_details": (
        "I've moved house and need to update my address on my account. What's the quickest way?",
        "Please update my phone number, I've got a new mobile. I can't receive the security "
        "codes on the old one.",
        "I got married and changed my surname. How do I update my name on my account and card?",
        "I need to change the email address linked to {channel}, the old one no longer works.",
        "Can you change my correspondence address? Statements are still going to my old flat.",
        "New address from {when}, please update it so my replacement card goes to the right place.",
    ),
    "direct_debit_or_standing_order": (
        "A direct debit to {biller} for {amount} was taken twice {when}. Please reverse the "
        "duplicate.",
        "I cancelled the direct debit to {biller} but they still took {amount}. Can you claim "
        "it back under the guarantee?",
        "My standing order to {payee} didn't go out {when}. It's been set up for months.",
        "How do I change the date of my standing order? I want it to leave after payday.",
        "{biller} says my direct debit failed but there was money in the account. What happened?",
        "I don't recognise a direct debit from {biller} for {amount}. I never set that up.",
    ),
}

_HOSPITAL_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "chest_pain_cardiac": (
        "{age_sex} c/o central chest pain radiating to L arm since {onset}. Sweaty and "
        "nauseous, {vitals}.",
        "{arrival}, {age_sex} with crushing chest tightness x {duration}, {pmh}. ECG done, ?ACS.",
        "Pt reports heavy pressure in chest on exertion, now at rest for {duration}. {vitals}.",
        "{age_sex}, {pmh}, chest pain {pain} going into jaw. GTN given with partial relief.",
        "Central chest pain since {onset}, 'like an elephant sitting on my chest'. Pale and "
        "clammy, {vitals}.",
        "{age_sex} c/o palpitations and chest pain, {pmh}. Trop requested.",
        "Chest pain {pain} radiating to back and L shoulder, SOB on minimal exertion. {vitals}.",
    ),
    "respiratory_distress": (
        "{age_sex} SOB ++, unable to complete sentences, {pmh}. {vitals}.",
        "{arrival}, increasing breathlessness over {duration}, audible wheeze. Using inhaler "
        "hourly with no relief.",
        "Pt c/o tight chest and wheezing, {pmh}. {vitals}, accessory muscle use.",
        "Breathless at rest since {onset}, productive cough with green sputum. {vitals}.",
        "{age_sex} struggling to breathe, lips bluish, speaking in single words. {vitals}.",
        "Acute SOB, ?PE, {pmh}, pleuritic chest pain {pain}. {vitals}.",
        "Pt says can't catch breath x {duration}, worse lying flat. Ankles swollen.",
    ),
    "fracture_or_injury": (
        "{age_sex} {mechanism}, pain and swelling {side} {limb}, unable to weight bear.",
        "{arrival} after {mechanism}. Obvious deformity of {side} {limb}, {pain}. NV intact.",
        "Pt {mechanism} {when}, c/o {side} {limb} pain {pain}, ?#. X-ray requested.",
        "{age_sex} injured {side} {limb} playing football, heard a crack. Bruising ++.",
        "Laceration to {side} hand approx 4cm after {mechanism}, bleeding controlled. Tetanus "
        "status unknown.",
        "{mechanism}, hit head, no LOC. Now c/o {side} {limb} pain and reduced ROM, {vitals}.",
        "{age_sex} twisted {side} {limb} {when}, swollen and tender over the bone.",
    ),
    "abdominal_pain": (
        "{age_sex} c/o RIF pain x {duration}, worse on movement, off food. {vitals}.",
        "Severe epigastric pain radiating to back {pain}, vomiting x3, {pmh}.",
        "Pt with colicky abdo pain since {onset}, loin to groin, ?renal colic. Can't sit still.",
        "{age_sex} generalised abdominal pain and distension, bowels not opened for "
        "{duration}. Vomiting.",
        "Abdo pain {pain} since {onset}, D&V, feels weak. {vitals}.",
        "{arrival}, {age_sex} sharp pain in RUQ after fatty meal, {pmh}.",
        "Lower abdominal pain and nausea x {duration}, tender on palpation. {vitals}.",
    ),
    "neurological_stroke_signs": (
        "{age_sex} sudden onset L sided weakness and facial droop, LKW {time}. FAST positive.",
        "{arrival}, slurred speech and R arm weakness since {onset}, {pmh}. {vitals}.",
        "Family noticed pt confused and unable to find words at {time}. Face drooping on one side.",
        "{age_sex} worst headache of life, sudden onset {when}, vomiting, neck stiffness. ?SAH.",
        "Pt c/o numbness down R side and blurred vision x {duration}, {pmh}. {vitals}.",
        "Sudden loss of balance and dizziness, unable to walk straight, {pmh}. Stroke call "
        "put out.",
        "{age_sex} found on floor with reduced GCS and L sided weakness, last seen well {time}.",
    ),
    "fever_infection": (
        "{age_sex} fever and rigors x {duration}, {vitals}. ?sepsis, source unclear.",
        "Pt c/o burning urine and loin pain, temp at home 39. {vitals}.",
        "{arrival}, {age_sex} confused with high temp, {pmh}. {vitals}. Sepsis screen started.",
        "Red hot swollen {side} {limb}, spreading redness x {duration}, feels feverish. "
        "?cellulitis.",
        "Cough, fever and aches for {duration}, not eating. {vitals}.",
        "{age_sex} post-op day 5, wound red and oozing, temp spiking. {vitals}.",
        "High temp, rash and headache since {onset}, photophobia. ?meningitis.",
    ),
    "allergic_reaction": (
        "{age_sex} ate {allergen} approx {duration} ago, now lip and tongue swelling, SOB. "
        "{vitals}.",
        "Known {allergen} allergy, accidental exposure, urticarial rash all over. Epipen given "
        "by partner.",
        "Pt started {antibiotic} {when}, now itchy widespread rash and facial swelling.",
        "{arrival}, {age_sex} stung by a wasp, throat feels tight, voice hoarse. {vitals}.",
        "Swollen eyes and hives after eating out, hx {allergen} allergy. {vitals}.",
        "{age_sex} anaphylaxis to {allergen}, IM adrenaline x1 by paramedics, wheeze improving.",
        "Tongue tingling and itchy throat after new medication, {pmh}. No stridor.",
    ),
    "mental_health_crisis": (
        "{age_sex} brought in by police under s136, expressing suicidal thoughts. Calm at present.",
        "Pt tearful and distressed, says cannot go on and has a plan, {pmh}. Not safe to "
        "leave alone.",
        "{arrival}, {age_sex} agitated, hearing voices telling them to harm others. MH team "
        "referral.",
        "Self-harm, superficial cuts to {side} forearm, pt says wanted the feelings to stop. "
        "{pmh}.",
        "Panic attacks getting worse over {duration}, not sleeping, feels out of control. "
        "Requests crisis team.",
        "{age_sex} found by family in distress, talking about ending life, no physical injuries. "
        "{vitals}.",
        "Pt paranoid, believes neighbours are watching, hasn't eaten for {duration}. {pmh}.",
    ),
    "pregnancy_complication": (
        "{age_sex} {gestation}, PV bleeding since {onset}, lower abdo cramping. {vitals}.",
        "{gestation} with severe headache, visual disturbance and swollen ankles. {vitals}. "
        "?pre-eclampsia.",
        "Pt {gestation}, reduced fetal movements for {duration}. Very anxious.",
        "{arrival}, {gestation}, contractions every 5 mins, waters broke at {time}.",
        "{age_sex} positive pregnancy test, L sided pelvic pain and shoulder tip pain. ?ectopic.",
        "{gestation}, vomiting ++ unable to keep fluids down x {duration}, ketones in urine.",
        "Abdominal pain and bleeding at {gestation}, {pmh}. {vitals}.",
    ),
    "medication_overdose": (
        "{age_sex} took {quantity} {drug} tablets {duration} ago, {intent}. {vitals}.",
        "{arrival}, found with empty packets of {drug} and {drug2}, drowsy, GCS {gcs}.",
        "Pt reports taking {quantity} {drug} with alcohol at {time}. Vomiting. Paracetamol "
        "level sent.",
        "Staggered OD of {drug} over the last few days, c/o abdo pain and nausea. {pmh}.",
        "{age_sex} accidental double dose of {drug}, feels dizzy and confused. {vitals}.",
        "Child took grandparent's {drug}, unknown quantity, approx {duration} ago. Currently "
        "alert.",
        "?opioid OD, pinpoint pupils, RR 8, naloxone given. {vitals}.",
    ),
}

BANK_LABELS: tuple[str, ...] = tuple(_BANK_TEMPLATES)
HOSPITAL_LABELS: tuple[str, ...] = tuple(_HOSPITAL_TEMPLATES)
_LABELS_BY_DOMAIN: Mapping[str, tuple[str, ...]] = {
    "bank": BANK_LABELS,
    "hospital": HOSPITAL_LABELS,
}

_FEMALE_NAMES: tuple[str, ...] = (
    "Maria Okafor", "Priya Raman", "Aisha Bello", "Fatima Haddad", "Sofia Rossi",
    "Hannah Kowalski", "Grace Adeyemi", "Emily Carter", "Zoe Papadopoulos", "Ingrid Larsen",
    "Yuki Tanaka", "Amara Nwosu", "Nadia Petrova", "Leila Farahani", "Mei Lin Zhou",
    "Isabel Fernandes", "Anika Sharma", "Chloe Martin", "Rosa Alvarez", "Eva Novak",
    "Lucy Bennett",
)  # fmt: skip
_MALE_NAMES: tuple[str, ...] = (
    "James Whitfield", "Tomasz Nowak", "Liam O'Connor", "Chen Wei", "Oliver Brennan",
    "Daniel Mensah", "Mohammed Rahman", "Lukas Becker", "Rahul Mehta", "Samuel Osei",
    "Carlos Mendoza", "Peter Lindqvist", "George Hughes", "Ethan Brooks", "Kwame Asante",
    "Thomas Byrne", "Jonas Weber", "Ibrahim Diallo", "Patrick Doyle",
)  # fmt: skip
SYNTHETIC_PERSON_NAMES: tuple[str, ...] = _FEMALE_NAMES + _MALE_NAMES

# ------------------------------------------------------------------------------ vocabulary

_BANK_VOCAB: Mapping[str, tuple[str, ...]] = {
    "card_type": (
        "debit card", "credit card", "Visa debit", "Mastercard", "card", "contactless card",
        "business card",
    ),
    "when": (
        "yesterday", "this morning", "on Monday", "last Friday", "on 3 March", "on the 14th",
        "two days ago", "at the weekend", "last night", "earlier today",
    ),
    "place": (
        "at the station", "in town", "on the bus", "abroad", "at a festival", "in Barcelona",
        "at the gym", "at a petrol station",
    ),
    "merchant": (
        "Tesco", "Amazon", "Uber", "Shell", "Ryanair", "Deliveroo", "Netflix", "Argos", "IKEA",
        "Starbucks", "Sainsbury's", "eBay", "ASOS", "Spotify", "Currys", "Lidl", "Just Eat",
    ),
    "channel": ("the app", "online banking", "the mobile app", "the website", "phone banking"),
    "payee": (
        "my landlord", "my sister", "a supplier", "my son", "the builder", "a friend",
        "my solicitor", "my mum",
    ),
    "wait": (
        "3 days", "a week", "48 hours", "five working days", "over two weeks", "10 days",
    ),
    "loan": (
        "mortgage", "personal loan", "car loan", "remortgage", "home improvement loan",
        "buy-to-let mortgage",
    ),
    "loan_amount": ("£5,000", "£8,500", "£12,000", "£25,000", "£180,000", "£250,000", "£320,000"),
    "term": ("3 years", "5 years", "10 years", "25 years", "35 years"),
    "when_future": (
        "next month", "in March", "at the end of the year", "in six weeks", "this summer",
    ),
    "salary": ("£38,000", "£52k", "£75,000", "£61,500", "£90k"),
    "fee": (
        "daily overdraft fee", "foreign transaction fee", "late payment fee",
        "monthly account fee", "cash withdrawal fee", "returned payment charge",
        "paper statement fee",
    ),
    "biller": (
        "British Gas", "the council", "Vodafone", "Sky", "Thames Water", "my gym", "EE",
        "TV Licensing",
    ),
}  # fmt: skip

_HOSPITAL_VOCAB: Mapping[str, tuple[str, ...]] = {
    "onset": (
        "this morning", "last night", "waking", "lunchtime", "yesterday", "about 20:00",
        "the weekend",
    ),
    "when": ("earlier today", "last night", "this morning", "yesterday evening", "an hour ago"),
    "duration": ("2 hrs", "30 mins", "3 days", "1 wk", "4 hours", "2/7", "24 hrs", "45 min"),
    "pmh": (
        "hx HTN", "PMH T2DM", "hx asthma", "hx COPD", "no sig PMH", "hx AF on apixaban",
        "hx depression", "hx IHD", "hx epilepsy", "PMH nil of note",
    ),
    "pain": ("7/10", "pain 9/10", "8/10", "pain score 6/10", "10/10"),
    "arrival": ("BIBA", "Self-presented", "Walk-in", "GP referral", "Brought in by family"),
    "mechanism": (
        "fell down stairs", "slipped on ice", "fell from ladder", "RTC as driver",
        "fell off bike", "tripped on kerb",
    ),
    "side": ("L", "R", "left", "right"),
    "limb": ("wrist", "ankle", "hip", "forearm", "lower leg", "shoulder", "knee"),
    "time": ("14:30", "09:15", "around 8pm", "21:40", "06:50", "midday"),
    "allergen": ("peanuts", "shellfish", "tree nuts", "sesame", "egg", "kiwi"),
    "antibiotic": ("amoxicillin", "penicillin V", "co-amoxiclav", "trimethoprim"),
    "quantity": ("approx 30", "about 20", "16", "a whole box of", "40", "an unknown number of"),
    "drug": (
        "paracetamol", "ibuprofen", "amitriptyline", "sertraline", "co-codamol", "diazepam",
    ),
    "drug2": ("tramadol", "zopiclone", "citalopram", "codeine"),
    "intent": ("deliberate", "states wanted to die", "impulsive after argument", "denies SI"),
    "gcs": ("9", "11", "12", "13", "14"),
    "gestation": (
        "28/40", "34 weeks pregnant", "G2P1 at 32/40", "12 weeks pregnant", "G1P0 36/40",
        "8/40",
    ),
}  # fmt: skip

# Vital-sign tendencies per label: field -> (low, high). Unlisted fields use _NORMAL_VITALS.
_NORMAL_VITALS: Mapping[str, tuple[float, float]] = {
    "HR": (62, 96), "SBP": (108, 142), "DBP": (62, 90), "RR": (12, 18), "SpO2": (96, 99),
    "T": (36.3, 37.4),
}  # fmt: skip
_LABEL_VITALS: Mapping[str, Mapping[str, tuple[float, float]]] = {
    "chest_pain_cardiac": {"HR": (88, 132), "SBP": (135, 185), "DBP": (85, 110)},
    "respiratory_distress": {"HR": (100, 135), "RR": (24, 38), "SpO2": (82, 92)},
    "fever_infection": {"HR": (98, 130), "SBP": (84, 118), "T": (38.1, 40.3)},
    "allergic_reaction": {"HR": (104, 142), "SBP": (72, 108), "SpO2": (88, 95)},
    "neurological_stroke_signs": {"SBP": (160, 215), "DBP": (90, 120), "GCS": (11, 15)},
    "medication_overdose": {"HR": (48, 128), "RR": (8, 22), "GCS": (8, 14)},
    "pregnancy_complication": {"SBP": (95, 165), "HR": (85, 120)},
}

_BANK_OPENERS = (
    "Hi,", "Hello,", "Hi there,", "Good morning,", "Dear Sir/Madam,", "Hello team,",
    "Urgent -", "hey,", "Evening,",
)  # fmt: skip
_BANK_CLOSERS = (
    "Thanks.", "Thanks in advance.", "Please help.", "Can someone get back to me today?",
    "Many thanks.", "Please advise asap.", "Cheers.", "thx", "Kind regards.",
    "Really frustrated with this.",
)  # fmt: skip
_NAME_INTROS = ("My name is {name}.", "This is {name}.", "I'm {name}.")
_NAME_SIGNOFFS = ("Regards, {name}", "Thanks, {name}", "- {name}", "Many thanks, {name}.")

# PII kinds that fit each domain, with relative weights.
_PII_WEIGHTS: Mapping[str, Mapping[str, float]] = {
    "bank": {
        "email": 3.0, "phone": 3.0, "card": 2.0, "iban": 1.5, "account": 2.5, "dob": 1.5,
        "name": 3.0,
    },
    "hospital": {"name": 4.0, "dob": 4.0, "phone": 3.0, "email": 1.0},
}  # fmt: skip

# One-kind PII sentences; ``{v}`` is the raw PII string.
_BANK_PII_SENTENCES: Mapping[str, tuple[str, ...]] = {
    "email": (
        "My email is {v}.", "Please reply to {v}.", "You can email me at {v}.",
        "Contact email: {v}.",
    ),
    "phone": (
        "Call me on {v}.", "My number is {v}.", "Please ring me back on {v}, I'm free after 5.",
        "Mobile: {v}.",
    ),
    "card": (
        "The card number is {v}.", "Card: {v}.", "The long number on the card is {v}.",
        "It's the card {v}.",
    ),
    "iban": (
        "The payment went to IBAN {v}.", "Beneficiary IBAN: {v}.", "I sent it to {v}.",
        "Their IBAN is {v}.",
    ),
    "account": ("My {v}.", "Details: {v}.", "This is about {v}."),
    "dob": ("For security, {v}.", "Security details: {v}.", "{v}."),
}  # fmt: skip
# Clause forms used when a message carries several kinds at once.
_BANK_PII_CLAUSES: Mapping[str, tuple[str, ...]] = {
    "email": ("email {v}", "my email is {v}"),
    "phone": ("phone {v}", "mobile {v}", "my number is {v}"),
    "card": ("card number {v}", "card {v}"),
    "iban": ("IBAN {v}", "the recipient IBAN is {v}"),
    "account": ("{v}",),
    "dob": ("{v}",),
}
_MULTI_PII_SENTENCES = ("My details: {clauses}.", "For reference, {clauses}.", "{clauses}.")
_HOSPITAL_HEADERS: Mapping[tuple[bool, bool], tuple[str, ...]] = {
    (True, True): ("Pt {name}, {dob}.", "Name: {name}, {dob}.", "{name} ({dob})."),
    (True, False): ("Pt {name}.", "Patient: {name}.", "Re: {name}."),
    (False, True): ("{dob}.", "Pt details: {dob}."),
}
_HOSPITAL_FOOTERS: Mapping[str, tuple[str, ...]] = {
    "phone": (
        "NOK (daughter) contactable on {v}.", "Pt mobile {v}.", "Contact number {v}.",
        "Partner waiting outside, tel {v}.",
    ),
    "email": ("Pt requests letters by email: {v}.", "Email for follow-up {v}."),
}  # fmt: skip

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.co.uk")
_REFERENCE_YEAR = 2024  # ages in the notes are relative to this year
_TYPO_RATE = 0.07
_LOWERCASE_RATE = 0.08  # bank messages typed all in lower case
_UNIFORM_MIX = 0.1  # share of every institution's label mix that is uniform
_SIZE_SPREAD = 0.4  # institution sizes range over (1 ± spread) x the mean


@dataclass(frozen=True)
class SyntheticConfig:
    """How much synthetic data to generate, and how it is spread over institutions.

    Parameters
    ----------
    domains
        Which domains to generate, from ``("bank", "hospital")``.
    institutions_per_domain
        Institutions per domain, named ``bank_a``, ``bank_b``, ... (at most 26).
    examples_per_institution
        Mean institution size; sizes spread evenly over 0.6x to 1.4x of it, in a seeded order.
    pii_fraction
        Probability that a text carries PII-like strings.
    label_skew
        Dirichlet concentration of each institution's label mix; smaller is more skewed.
    seed
        Seed of the one random generator everything is drawn from.
    """

    domains: tuple[str, ...] = DOMAINS
    institutions_per_domain: int = 3
    examples_per_institution: int = 600
    pii_fraction: float = 0.4
    label_skew: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.domains, tuple) or not self.domains:
            raise ValueError(f"domains must be a non-empty tuple, got {self.domains!r}")
        for domain in self.domains:
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must not repeat, got {self.domains!r}")
        _require_int("institutions_per_domain", self.institutions_per_domain, 1, 26)
        _require_int("examples_per_institution", self.examples_per_institution, 1, None)
        _require_int("seed", self.seed, None, None)
        if not _is_real(self.pii_fraction) or not 0.0 <= self.pii_fraction <= 1.0:
            raise ValueError(f"pii_fraction must be a number in [0, 1], got {self.pii_fraction!r}")
        if not _is_real(self.label_skew) or not 0.0 < self.label_skew < math.inf:
            raise ValueError(
                f"label_skew must be a positive finite number, got {self.label_skew!r}"
            )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_int(name: str, value: object, low: int | None, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def labels_for(domains: Sequence[str]) -> tuple[str, ...]:
    """The fixed label set of some domains, in a stable order.

    Parameters
    ----------
    domains
        Domain names, from :data:`DOMAINS`; their order does not matter.

    Returns
    -------
    tuple[str, ...]
        Labels of the requested domains, bank labels before hospital labels.
    """
    for domain in domains:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return tuple(
        label for domain in DOMAINS if domain in domains for label in _LABELS_BY_DOMAIN[domain]
    )


# ------------------------------------------------------------------------- PII strings


def _luhn_check_digit(payload: str) -> str:
    total = 0
    for position, char in enumerate(reversed(payload)):
        value = int(char)
        if position % 2 == 0:  # doubled once the check digit is appended
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str((10 - total % 10) % 10)


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _card_number(rng: random.Random) -> str:
    prefix = rng.choice(("4", "51", "52", "53", "54", "55"))
    payload = prefix + _digits(rng, 15 - len(prefix))
    number = payload + _luhn_check_digit(payload)
    groups = [number[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice((" ", " ", "-")).join(groups)


def _iban(rng: random.Random) -> str:
    country = rng.choice(("GB", "GB", "DE", "NL", "IE"))
    if country == "GB":
        bban = rng.choice(("WEST", "NWBK", "BARC", "MIDL", "LOYD")) + _digits(rng, 14)
    elif country == "IE":
        bban = rng.choice(("AIBK", "BOFI")) + _digits(rng, 14)
    elif country == "NL":
        bban = rng.choice(("ABNA", "INGB", "RABO")) + _digits(rng, 10)
    else:
        bban = _digits(rng, 18)
    numeric = "".join(str(int(char, 36)) for char in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.2:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _phone(rng: random.Random) -> str:
    style = rng.randrange(8)
    tail = f"{rng.randrange(1000):03d}"
    area = rng.choice(("202", "312", "415", "617"))
    line = f"01{rng.randrange(100):02d}"
    if style == 0:
        return f"+44 20 7946 0{tail}"
    if style == 1:
        return f"020 7946 0{tail}"
    if style == 2:
        return f"07700 900{tail}"
    if style == 3:
        return f"0161 496 0{tail}"
    if style == 4:
        return f"({area}) 555-{line}"
    if style == 5:
        return rng.choice((f"{area}-555-{line}", f"+1 {area} 555 {line}"))
    if style == 6:
        return f"+33 1 {' '.join(_digits(rng, 2) for _ in range(4))}"
    return f"+49 30 {_digits(rng, 4)} {_digits(rng, 4)}"


def _email(rng: random.Random, name: str) -> str:
    parts = ["".join(c for c in part.lower() if c.isalpha()) for part in name.split()]
    first, last = parts[0], parts[-1]
    handle = rng.choice((f"{first}.{last}", f"{first}{last}", f"{first[0]}.{last}", last))
    if rng.random() < 0.5:
        handle += str(rng.randrange(10, 100))
    return f"{handle}@{rng.choice(_EMAIL_DOMAINS)}"


def _account(rng: random.Random) -> tuple[str, str]:
    """An account phrase and the raw number in it."""
    number = str(rng.randrange(10_000_000, 100_000_000))
    if rng.random() < 0.35:
        sort_code = "-".join(f"{rng.randrange(100):02d}" for _ in range(3))
        raw = f"{sort_code} {number}"
        phrase = rng.choice(("acct no. {v}", "sort code and account {v}", "account {v}"))
    else:
        raw = number
        phrase = rng.choice(
            ("account number {v}", "account no. {v}", "acct {v}", "a/c {v}", "account {v}")
        )
    return phrase.format(v=raw), raw


def _date_of_birth(rng: random.Random, age: int) -> tuple[str, str]:
    """A date-of-birth phrase and the raw date in it, consistent with ``age``."""
    year, month, day = _REFERENCE_YEAR - age, rng.randint(1, 12), rng.randint(1, 28)
    if rng.random() < 0.3:
        suffix = "th" if 4 <= day <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        raw = rng.choice(
            (
                f"{day} {_MONTHS[month - 1]} {year}",
                f"{day}{suffix} {_MONTHS[month - 1]} {year}",
                f"{_MONTHS[month - 1]} {day}, {year}",
            )
        )
        phrase = rng.choice(("born {v}", "born on {v}", "date of birth {v}"))
    else:
        raw = rng.choice(
            (
                f"{day:02d}/{month:02d}/{year}",
                f"{day}/{month}/{year}",
                f"{day:02d}-{month:02d}-{year}",
                f"{day:02d}.{month:02d}.{year}",
                f"{year}-{month:02d}-{day:02d}",
            )
        )
        phrase = rng.choice(
            ("DOB {v}", "DOB: {v}", "D.O.B. {v}", "date of birth: {v}", "date of birth is {v}")
        )
    return phrase.format(v=raw), raw


@dataclass(frozen=True)
class _Person:
    name: str
    age: int
    female: bool


def _pii_string(rng: random.Random, kind: str, person: _Person) -> tuple[str, str]:
    """A phrase carrying PII of ``kind``, and the raw PII string inside it."""
    if kind == "account":
        return _account(rng)
    if kind == "dob":
        return _date_of_birth(rng, person.age)
    if kind == "email":
        raw = _email(rng, person.name)
    elif kind == "phone":
        raw = _phone(rng)
    elif kind == "card":
        raw = _card_number(rng)
    elif kind == "iban":
        raw = _iban(rng)
    elif kind == "name":
        raw = person.name
    else:
        raise ValueError(f"unknown PII kind {kind!r}")
    return raw, raw


@dataclass(frozen=True)
class _Pii:
    """The PII of one text: phrases to place, and what was inserted."""

    phrases: Mapping[str, str]  # kind -> phrase or raw value to place in the text
    inserted: tuple[PiiInsertion, ...]


def _draw_pii(rng: random.Random, domain: str, person: _Person, fraction: float) -> _Pii:
    if rng.random() >= fraction:
        return _Pii({}, ())
    weights = dict(_PII_WEIGHTS[domain])
    wanted = rng.choices((1, 2, 3), weights=(0.55, 0.33, 0.12))[0]
    kinds: list[str] = []
    while len(kinds) < wanted:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        kinds.append(kind)
        del weights[kind]
    phrases: dict[str, str] = {}
    inserted: list[PiiInsertion] = []
    for kind in sorted(kinds, key=PII_KINDS.index):
        phrases[kind], raw = _pii_string(rng, kind, person)
        inserted.append((kind, raw))
    return _Pii(phrases, tuple(inserted))


# --------------------------------------------------------------------------- composition


def _fill(template: str, value: Callable[[str], str]) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return template.format_map({name: value(name) for name in sorted(fields)})


def _typo(rng: random.Random, text: str) -> str:
    """Swap two adjacent letters inside one longer word."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if word.isalpha() and len(word) >= 5]
    if not candidates:
        return text
    index = rng.choice(candidates)
    word = words[index]
    at = rng.randrange(1, len(word) - 2)
    words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return " ".join(words)


def _amount(rng: random.Random) -> str:
    currency = rng.choice(("£", "£", "£", "$", "€"))
    value = rng.choice((rng.uniform(3, 60), rng.uniform(60, 600), rng.uniform(600, 6000)))
    if rng.random() < 0.4:
        return f"{currency}{round(value):,}"
    return f"{currency}{value:,.2f}"


def _bank_body(rng: random.Random, label: str) -> tuple[str, bool]:
    """A support message body, and whether its first word may be lower-cased after "Hi,"."""

    def value(name: str) -> str:
        return _amount(rng) if name == "amount" else rng.choice(_BANK_VOCAB[name])

    template = rng.choice(_BANK_TEMPLATES[label])
    body = _fill(template, value)
    first_word = body.split(" ", 1)[0]
    return body, not template.startswith("{") and first_word != "I" and not first_word.startswith(
        "I'"
    )


def _vitals(rng: random.Random, label: str) -> str:
    ranges = {**_NORMAL_VITALS, **_LABEL_VITALS.get(label, {})}

    def draw(field: str) -> float:
        low, high = ranges[field]
        return rng.uniform(low, high)

    systolic = round(draw("SBP"))
    parts = {
        "BP": f"BP {systolic}/{min(round(draw('DBP')), systolic - 20)}",
        "HR": f"HR {round(draw('HR'))}",
        "RR": f"RR {round(draw('RR'))}",
        "SpO2": rng.choice((f"SpO2 {round(draw('SpO2'))}%", f"sats {round(draw('SpO2'))}% RA")),
        "T": rng.choice((f"T {draw('T'):.1f}", f"temp {draw('T'):.1f}C")),
    }
    if "GCS" in ranges:
        parts["GCS"] = f"GCS {round(draw('GCS'))}"
    chosen = set(rng.sample(sorted(parts), rng.randint(2, min(4, len(parts)))))
    return rng.choice((", ", " ")).join(part for key, part in parts.items() if key in chosen)


def _age_sex(rng: random.Random, person: _Person) -> str:
    letter, word = ("F", "woman") if person.female else ("M", "man")
    return rng.choice(
        (
            f"{person.age}{letter}",
            f"{person.age} y/o {letter}",
            f"{person.age}yo {'female' if person.female else 'male'}",
            f"{person.age}-year-old {word}",
        )
    )


def _hospital_body(rng: random.Random, label: str, person: _Person) -> tuple[str, bool]:
    """A triage note body, and whether it already reports vital signs."""

    def value(name: str) -> str:
        if name == "age_sex":
            return _age_sex(rng, person)
        if name == "vitals":
            return _vitals(rng, label)
        return rng.choice(_HOSPITAL_VOCAB[name])

    template = rng.choice(_HOSPITAL_TEMPLATES[label])
    return _capitalize(_fill(template, value)), "{vitals}" in template


def _clauses(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _bank_text(rng: random.Random, label: str, pii: _Pii) -> str:
    body, lowerable = _bank_body(rng, label)
    if rng.random() < _TYPO_RATE:
        body = _typo(rng, body)
    if rng.random() < _LOWERCASE_RATE:
        body = body.lower()
    parts: list[str] = []
    if rng.random() < 0.55:
        parts.append(rng.choice(_BANK_OPENERS))
    name = pii.phrases.get("name")
    intro = name is not None and rng.random() < 0.4
    if intro:
        parts.append(rng.choice(_NAME_INTROS).format(name=name))
    elif parts and parts[-1].endswith(",") and lowerable:
        body = body[0].lower() + body[1:]  # "Hi, can you ..."
    parts.append(body)
    others = [kind for kind in pii.phrases if kind != "name"]
    if len(others) == 1:
        kind = others[0]
        sentence = rng.choice(_BANK_PII_SENTENCES[kind]).format(v=pii.phrases[kind])
        parts.append(_capitalize(sentence))
    elif others:
        clauses = [rng.choice(_BANK_PII_CLAUSES[k]).format(v=pii.phrases[k]) for k in others]
        sentence = rng.choice(_MULTI_PII_SENTENCES).format(clauses=_clauses(clauses))
        parts.append(_capitalize(sentence))
    if name is not None and not intro:
        parts.append(rng.choice(_NAME_SIGNOFFS).format(name=name))
    elif rng.random() < 0.45:
        parts.append(rng.choice(_BANK_CLOSERS))
    return " ".join(parts)


def _hospital_text(rng: random.Random, label: str, person: _Person, pii: _Pii) -> str:
    body, has_vitals = _hospital_body(rng, label, person)
    if rng.random() < _TYPO_RATE / 2:
        body = _typo(rng, body)
    parts: list[str] = []
    name, dob = pii.phrases.get("name"), pii.phrases.get("dob")
    if name is not None or dob is not None:
        header = rng.choice(_HOSPITAL_HEADERS[(name is not None, dob is not None)])
        parts.append(_capitalize(header.format(name=name, dob=dob)))
    parts.append(body)
    footers = [kind for kind in ("phone", "email") if kind in pii.phrases]
    for kind in footers:
        parts.append(rng.choice(_HOSPITAL_FOOTERS[kind]).format(v=pii.phrases[kind]))
    if not footers and not has_vitals and rng.random() < 0.3:
        parts.append(f"Obs: {_vitals(rng, label)}.")
    return " ".join(parts)


def _person(rng: random.Random, domain: str, label: str) -> _Person:
    pregnant = label == "pregnancy_complication"
    female = pregnant or rng.random() < 0.5
    age = rng.randint(18, 44) if pregnant else rng.randint(18 if domain == "bank" else 16, 92)
    return _Person(rng.choice(_FEMALE_NAMES if female else _MALE_NAMES), age, female)


def _record(
    rng: random.Random, domain: str, label: str, pii_fraction: float
) -> tuple[str, tuple[PiiInsertion, ...]]:
    person = _person(rng, domain, label)
    pii = _draw_pii(rng, domain, person, pii_fraction)
    if domain == "bank":
        return _bank_text(rng, label, pii), pii.inserted
    return _hospital_text(rng, label, person, pii), pii.inserted


# ----------------------------------------------------------------------- institutions


def _label_mix(rng: random.Random, labels: Sequence[str], skew: float) -> list[float]:
    """A Dirichlet(skew) draw over ``labels``, mixed with a little of the uniform mix."""
    draws = [rng.gammavariate(skew, 1.0) for _ in labels]
    total = sum(draws)
    if total <= 0.0:  # every draw underflowed: one label takes the Dirichlet share
        dominant = rng.randrange(len(labels))
        draws = [float(i == dominant) for i in range(len(labels))]
        total = 1.0
    return [(1 - _UNIFORM_MIX) * d / total + _UNIFORM_MIX / len(labels) for d in draws]


def _label_counts(mix: Sequence[float], size: int) -> list[int]:
    """Largest-remainder allocation of ``size`` records to labels by ``mix``."""
    exact = [p * size for p in mix]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(mix)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def _institution_sizes(rng: random.Random, count: int, mean: int) -> list[int]:
    if count == 1:
        return [mean]
    factors = [1 - _SIZE_SPREAD + 2 * _SIZE_SPREAD * i / (count - 1) for i in range(count)]
    rng.shuffle(factors)
    return [max(1, round(mean * factor)) for factor in factors]


def generate_records_with_pii(
    config: SyntheticConfig = SyntheticConfig(),
) -> list[tuple[dict[str, str], tuple[PiiInsertion, ...]]]:
    """Generate the data set, with the PII strings inserted into each row.

    Parameters
    ----------
    config
        What to generate.

    Returns
    -------
    list[tuple[dict[str, str], tuple[tuple[str, str], ...]]]
        One ``(row, inserted)`` per record, ordered by domain, institution, then index.
        ``row`` is as in :func:`generate_records`; ``inserted`` holds ``(kind, raw)`` for each
        PII string placed verbatim in the row's text.
    """
    rng = random.Random(config.seed)
    # Draw every institution's size and label sequence first, so that the data split does not
    # shift when the wording of the texts changes.
    plan: list[tuple[str, str, list[str]]] = []
    for domain in config.domains:
        labels = _LABELS_BY_DOMAIN[domain]
        n = config.institutions_per_domain
        sizes = _institution_sizes(rng, n, config.examples_per_institution)
        for letter, size in zip(string.ascii_lowercase[:n], sizes, strict=True):
            counts = _label_counts(_label_mix(rng, labels, config.label_skew), size)
            order = [label for label, k in zip(labels, counts, strict=True) for _ in range(k)]
            rng.shuffle(order)
            plan.append((domain, f"{domain}_{letter}", order))
    out: list[tuple[dict[str, str], tuple[PiiInsertion, ...]]] = []
    for domain, institution, order in plan:
        for index, label in enumerate(order):
            text, inserted = _record(rng, domain, label, config.pii_fraction)
            row = {
                "id": f"{institution}-{index:06d}",
                "text": text,
                "label": label,
                "institution": institution,
                "domain": domain,
                "pii": ",".join(kind for kind, _ in inserted),
            }
            out.append((row, inserted))
    return out


def generate_records(config: SyntheticConfig = SyntheticConfig()) -> list[dict[str, str]]:
    """Generate the synthetic data set.

    Parameters
    ----------
    config
        What to generate; the same config always gives the same rows.

    Returns
    -------
    list[dict[str, str]]
        Rows with keys ``id`` (unique, e.g. ``"bank_a-000017"``), ``text``, ``label``,
        ``institution``, ``domain`` and ``pii`` (comma-separated PII kinds inserted into the
        text, in :data:`client.redaction.PII_KINDS` order; ``""`` if none).
    """
    return [row for row, _ in generate_records_with_pii(config)]


# ---------------------------------------------------------------------------------- files


def _write_atomically(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write a file via a temporary sibling, fsync it, then rename it over ``path``."""
    with atomic_writer(path, "w", encoding="utf-8", newline="") as stream:
        write(stream)


def write_csv(rows: Sequence[Mapping[str, str]], path: Path) -> None:
    """Write rows as CSV with columns ``id,text,label,institution,domain,pii``, atomically.

    Parameters
    ----------
    rows
        Rows as returned by :func:`generate_records`.
    path
        Destination; its directory must exist. Replaced only once fully written.
    """

    def write(stream: IO[str]) -> None:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row[column] for column in COLUMNS})

    _write_atomically(Path(path), write)


def write_jsonl(rows: Sequence[Mapping[str, str]], path: Path) -> None:
    """Write rows as JSON Lines (one object per line, keys in column order), atomically.

    Parameters
    ----------
    rows
        Rows as returned by :func:`generate_records`.
    path
        Destination; its directory must exist. Replaced only once fully written.
    """

    def write(stream: IO[str]) -> None:
        for row in rows:
            record = {column: row[column] for column in COLUMNS}
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")

    _write_atomically(Path(path), write)


def write_embedded_data(path: Path, config: SyntheticConfig, data_config: DataConfig) -> DataConfig:
    """Write the embedded data set to ``path`` (CSV) and return how to read it back.

    Parameters
    ----------
    path
        Destination CSV file.
    config
        Generator settings.
    data_config
        The caller's data settings; columns are set to the generated ones, and the label set
        to the generator's unless the caller fixed one.

    Returns
    -------
    DataConfig
        Settings for :func:`client.data_loading.load_labelled_texts` on ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(generate_records(config), path)
    return dataclasses.replace(
        data_config,
        text_column="text",
        label_column="label",
        id_column="id",
        labels=data_config.labels or labels_for(config.domains),
    )
