"""Write the quickstart's ticket-triage data (configs/data/quickstart/), deterministically.

Every sentence here was written for Stillhouse; no third-party text is used. The
story: "Brightcart", a fictional online shop with a mobile app, a paid membership
("Brightcart Plus") and a store payment card, receives support tickets in twelve
intents. Some intents overlap on purpose (a locked account after wrong passwords,
a refund after a cancelled order, a double charge that asks for money back) so a
classifier has honest mistakes to make.

Outputs:
    intents.json         the 12 intents and a one-line description each
    teacher_train.jsonl  7 labelled examples per intent (text, label): builds the teacher
    tickets.jsonl        ~1,200 unlabelled tickets (ticket_id, text), with near-duplicates,
                         exact duplicates and junk rows for curation to find
    test.jsonl           30 labelled tickets per intent (text, label), written from
                         phrasings held out from the teacher and the pool

Each intent has three disjoint sets of core phrasings (teacher / pool / test) and two
of supporting details (pool / test); wrappers (greetings, sign-offs, channel, typos)
are generic. The pool's last 8-12 phrasings per intent were added later, written from the
intents, the teacher's and the pool's phrasings alone (the test's unseen), keeping only
those that share no four words in a row with a test phrasing and come no closer to one
(MiniLM cosine, at most 0.853) than the teacher's and the first 12 pool phrasings do: the
pool varies more, and the test's phrasings stay unseen.
Run:  python scripts/make_quickstart_data.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "configs" / "data" / "quickstart"
TEACHER_PER_INTENT = 7
TEST_PER_INTENT = 30
POOL_SIZE = 1200
EXACT_DUPLICATES = 16
NEAR_DUPLICATES = 40
JUNK = [
    "",
    "   ",
    "hello?",
    "test",
    "asdfgh",
    "????",
    ".",
    "ok",
    "no",
    "see attached",
    "Sent from my phone",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "123456",
    "https://brightcart.example/help",
    "[this message was left empty by the sender]",
    "Out of office: I am away until Monday and will reply when I am back.",
]


@dataclass(frozen=True)
class Intent:
    name: str
    description: str
    teacher: list[str]  # core phrasings only the teacher's examples use
    pool: list[str]  # core phrasings of the unlabelled pool
    test: list[str]  # core phrasings held out for the test set
    pool_details: list[str]
    test_details: list[str]


INTENTS = [
    Intent(
        "card_lost",
        "The customer's Brightcart payment card is lost or stolen and must be blocked or replaced.",
        teacher=[
            "I lost my Brightcart card, can you block it?",
            "My card was stolen yesterday, please freeze it right away.",
            "I can't find my payment card anywhere and need a replacement.",
            "Someone took my wallet with my Brightcart card inside.",
            "Please cancel my card ending {last4}, it is missing.",
        ],
        pool=[
            "my card is gone, i think i dropped it on the bus",
            "I need to report a lost card ending in {last4}.",
            "Can you send me a new card? The old one disappeared.",
            "My bag was stolen on {date} and the store card was in it.",
            "Please block card {last4} immediately, I have no idea where it is.",
            "I left my card at a restaurant and it's not there anymore.",
            "How do I order a replacement for a card I lost?",
            "Lost my brightcart card while travelling, what do I do now?",
            "My purse got stolen, can you stop anyone from using my card?",
            "The card never came back after I lent my jacket to a friend, please freeze it.",
            "I misplaced my payment card and want it disabled before someone uses it.",
            "Card stolen. Block it please.",
            "I would be grateful if you could deactivate my store card ending {last4} and issue a "
            "new one, as it appears to have been lost.",
            "Had my pocket picked on the train. Card's gone along with everything else.",
            "I've searched the whole house and the car and the card just isn't anywhere.",
            "My Brightcart card must have fallen out somewhere between the shops and home on {date}.",
            "Someone broke into my car and took my wallet, shop card included. Please make sure "
            "nobody can spend on it.",
            "card lost, need it cancelled asap and a new one posted out",
            "My teenager borrowed my card and has lost it. Can you kill it and send a fresh one?",
            "I think my new card was stolen from my mailbox before I even got to use it.",
            "Where do I report my payment card as missing? I can't see the option anywhere.",
            "I may have left my card in a taxi in {city}, so I'd rather you block it to be safe.",
        ],
        test=[
            "I think somebody pickpocketed me, my Brightcart card is no longer in my wallet.",
            "Can I get a new card shipped? Mine went missing somewhere at the airport.",
            "Please deactivate the card ending {last4}, I can't locate it.",
            "my card fell out of my pocket, how do i lock it",
            "Our house was broken into on {date} and my card was taken.",
            "I want to put a stop on my store card, it's been lost since the weekend.",
            "Is there a way to freeze a card I can't find? Worried about fraud.",
        ],
        pool_details=[
            "I haven't seen any strange payments yet.",
            "The last time I used it was at the checkout on {date}.",
            "I'd like the new one sent to my usual address.",
            "It had about {amount} of credit available.",
        ],
        test_details=[
            "I checked the app and nothing odd has gone through so far.",
            "Please make sure nobody can use it online either.",
            "I'll need a replacement before my trip next week.",
        ],
    ),
    Intent(
        "refund_request",
        "The customer returned or rejected items and wants their money back.",
        teacher=[
            "I sent the parcel back two weeks ago, when will I get my refund?",
            "I'd like a refund for order {order}, the item was faulty.",
            "The jacket didn't fit so I returned it. Where is my money?",
            "Please refund me, the product arrived broken.",
            "Can I get my money back for something I returned?",
        ],
        pool=[
            "I returned order {order} on {date} and still no refund.",
            "The blender stopped working after a day, I want my money back.",
            "How long do refunds take? I dropped off the return {days} days ago.",
            "You received my return, the tracking says so, but I haven't been refunded {amount}.",
            "i want a refund the shoes are the wrong colour",
            "Please put the {amount} back on my card, I sent everything back.",
            "The item was not as described so I'd like a full refund.",
            "Your courier picked up my return but the refund hasn't shown up.",
            "Could you refund the headphones from order {order}? One side doesn't work.",
            "I was promised a refund by your colleague last week and nothing happened.",
            "Want to return the lamp for a refund, it's cracked.",
            "Refund status for {order}?",
            "The package went back to you over a fortnight ago and I'm still out of pocket.",
            "I refused the delivery at the door because the box was smashed. When do I get the {amount} back?",
            "Kindly reimburse me for the returned coat; your warehouse confirmed receipt on {date}.",
            "Half the set was missing when it arrived, so I sent it back. I'd like my money returned.",
            "my return was accepted but the money still isnt in my account",
            "Can the refund go to my bank account rather than store credit? The item has already gone back.",
            "I've been waiting {days} days for the refund on the rug I posted back. What's the hold-up?",
            "The dress came in a completely different size from what I ordered, so it's gone back. Money back please.",
            "Could you process the reimbursement for the defective kettle I returned last week?",
            "You told me the refund would be issued within 5 working days of you getting my return. "
            "It's been well over that.",
            "I rejected the parcel since it was the wrong item entirely, so please credit my card.",
            "Returned it, you've got it, where's my cash?",
        ],
        test=[
            "My return was delivered back to your warehouse on {date}, but the money hasn't come back.",
            "I'm still waiting to be reimbursed for the coat I sent back.",
            "The kettle leaks, I would like you to pay me back please.",
            "When does the {amount} for my returned order go back onto my account?",
            "got a damaged item, returned it, where's my money",
            "I'd like to be reimbursed for order {order}; the box was empty when it arrived.",
            "Can you process my refund? The return label says it was received.",
        ],
        pool_details=[
            "I still have the return receipt.",
            "The item is unused and in its original packaging.",
            "I paid {amount} with my card.",
            "Your returns page says 5 working days but it has been longer.",
        ],
        test_details=[
            "I have the drop-off slip from the post office.",
            "It's been over {days} days now.",
            "I don't want store credit, I want it back on my card.",
        ],
    ),
    Intent(
        "delivery_late",
        "An order has not arrived by its expected delivery date or tracking has stalled.",
        teacher=[
            "My order {order} was supposed to arrive on {date} and it's still not here.",
            "Where is my parcel? The tracking hasn't changed in days.",
            "Delivery is late again, when will my package come?",
            "It's been a week past the delivery date and nothing has arrived.",
            "The app says out for delivery since Monday but no parcel.",
        ],
        pool=[
            "order {order} still hasn't shown up",
            "The estimated delivery was {date}. Any update on where it is?",
            "Tracking has said 'in transit' for {days} days, is it lost?",
            "I needed this for a birthday and it still hasn't been delivered.",
            "My groceries were due this morning and the driver never came.",
            "Could you chase the courier? My package is very late.",
            "Nothing arrived yet and the delivery window passed hours ago.",
            "Why is my order taking so long? It said 2-day shipping.",
            "The parcel is stuck at the depot according to tracking.",
            "When will order {order} actually get to me?",
            "I've been waiting at home all day for a delivery that never turned up.",
            "Still waiting on my stuff from {date}.",
            "My parcel seems to have vanished into thin air, the tracking hasn't budged since {date}.",
            "It's now {days} days past the promised date and still nothing on my doorstep.",
            "Is my order ever going to turn up? I've been waiting ages.",
            "Kindly advise on the whereabouts of order {order}, which was due for delivery last week.",
            "Tracking just shows 'label created' and nothing after that, and it's been a week.",
            "I paid extra for next-day delivery and it's been three days.",
            "The delivery slot came and went and nobody showed up with my shopping.",
            "My order has been sitting at the sorting centre in {city} for days with no movement.",
            "Would you be able to find out what's happened to my delivery? It's well overdue.",
            "The furniture we ordered was meant to come Tuesday, it's now Friday and we've heard nothing.",
        ],
        test=[
            "My package was meant to be here by {date}; it hasn't come and tracking is frozen.",
            "Has my order been shipped at all? It's overdue.",
            "The courier keeps pushing the delivery date back.",
            "No sign of order {order} and I paid for express.",
            "hey where is my delivery its been ages",
            "Tracking shows the parcel hasn't moved from the sorting centre since {date}.",
            "I was told it would come today, it didn't, what's going on?",
        ],
        pool_details=[
            "I paid {amount} for next-day shipping.",
            "Nobody left a card or a note.",
            "My neighbours haven't received anything for me either.",
            "The tracking number doesn't show any scans.",
        ],
        test_details=[
            "I've checked with the building reception and nothing came.",
            "I'm going away soon so I need it quickly.",
            "The shipping confirmation came on {date}.",
        ],
    ),
    Intent(
        "password_reset",
        "The customer forgot their password or cannot complete a password reset.",
        teacher=[
            "I forgot my password, how do I reset it?",
            "The password reset email never arrives.",
            "Can you help me change my password? I can't remember it.",
            "The reset link says it has expired.",
            "I want to set a new password for my account {email}.",
        ],
        pool=[
            "forgot password pls help",
            "I clicked 'forgot password' but got no email at {email}.",
            "How can I change my password from the app?",
            "The link to reset my password doesn't work, it shows an error.",
            "I don't remember which password I used for Brightcart.",
            "Can you send me a password reset link?",
            "My new password isn't accepted, it says it doesn't meet the rules.",
            "I want to update my password because I used it on another site.",
            "The reset code you texted me is not working.",
            "I need to reset my login details, I've forgotten them.",
            "Password reset page just keeps loading.",
            "How often should I change my password and where do I do it?",
            "I've completely blanked on my login password, what's the procedure to get a new one?",
            "When I type a new password on the reset screen it says the passwords don't match, even though they do.",
            "Please advise how I might change my account password, as I suspect my current one is no longer secure.",
            "My password manager lost my Brightcart login and I have no idea what the password was.",
            "The reset email goes to my old address {email}, which I can't get into anymore.",
            "Clicking 'send reset link' gives me 'something went wrong, try again later'.",
            "I reset my password yesterday and have already forgotten the new one. Can I do it again?",
            "passwd not working, need to make a new one",
        ],
        test=[
            "I can't recall my password and the reset mail isn't in my inbox or spam.",
            "Please help me choose a new password, the old one slipped my mind.",
            "The 'reset password' button does nothing when I tap it.",
            "Every time I open the reset link it tells me the token is invalid.",
            "i need a new password i forgot mine",
            "Where do I go to change the password on my profile?",
            "The verification code for resetting my password never comes through.",
        ],
        pool_details=[
            "I've checked my spam folder too.",
            "My email address is {email}.",
            "I'm using the {device}.",
            "I tried three times already.",
        ],
        test_details=[
            "The account is registered to {email}.",
            "I'd rather not create a new account.",
            "I tried on both the website and the app.",
        ],
    ),
    Intent(
        "cancel_subscription",
        "The customer wants to end their paid Brightcart Plus membership or stop its renewal.",
        teacher=[
            "Please cancel my Brightcart Plus membership.",
            "How do I stop my subscription from renewing?",
            "I don't want the monthly plan anymore, cancel it.",
            "I want to end my membership before the next payment.",
            "Can you turn off auto-renew on my Plus plan?",
        ],
        pool=[
            "cancel my subscription please",
            "I'm not using Plus enough, I'd like to unsubscribe.",
            "How can I cancel the {plan} membership in the app?",
            "Please make sure I'm not charged {amount} again next month, I'm leaving Plus.",
            "I signed up for the free trial and want to cancel before it bills me.",
            "Stop my membership, I'm moving abroad.",
            "I'd like to close my Plus subscription effective today.",
            "The cancel button in settings isn't there, how do I quit the plan?",
            "I no longer need the delivery pass, please end it.",
            "Don't renew my membership on {date}.",
            "I want out of the subscription, it's too expensive.",
            "Can I cancel Brightcart Plus and keep my account?",
            "I'd like to terminate my Brightcart Plus membership at the end of this billing period.",
            "Please don't take another membership payment from me, I'm done with Plus.",
            "Money's tight at the moment so I'm going to let Plus go. How do I cancel?",
            "Can you switch off the yearly renewal? I won't be carrying on after {date}.",
            "Not worth it for how little I order, please cancel my Plus.",
            "I keep getting charged {amount} a month for a membership I don't want. Cancel it now please.",
            "Kindly discontinue my subscription; I shall not be requiring it going forward.",
            "Where's the option to quit Brightcart Plus? I've looked all over my account.",
            "My husband already pays for Plus on his account, so I want to get rid of mine.",
            "I'd like to drop the membership altogether and just have a regular free account.",
        ],
        test=[
            "Please terminate my recurring membership; I won't be using it anymore.",
            "I'd like to opt out of the {plan} plan before it charges me again.",
            "How do I unsubscribe from the paid tier? I can't find the option.",
            "end my plus membership",
            "My trial is ending on {date}, I don't want it to convert to a paid plan.",
            "Can you stop the yearly renewal of my membership?",
            "We're cutting costs at home so I need to drop the Plus plan.",
        ],
        pool_details=[
            "I've been a member for {years} years.",
            "My account email is {email}.",
            "I'd appreciate a confirmation by email.",
            "The renewal is due on {date}.",
        ],
        test_details=[
            "Please confirm in writing once it's done.",
            "I don't want to lose my order history though.",
            "It renews automatically each month at {amount}.",
        ],
    ),
    Intent(
        "change_address",
        "The customer wants to update their delivery or billing address.",
        teacher=[
            "I moved house, how do I update my address?",
            "Please change my delivery address to {street}, {city}.",
            "Can I edit the shipping address on my account?",
            "My billing address is wrong, I need to fix it.",
            "I want future orders sent to my new flat in {city}.",
        ],
        pool=[
            "new address: {street}, {city}. please update",
            "How do I change where my parcels get delivered?",
            "I'm relocating to {city} next month, can I update my details?",
            "The app won't let me save my new postcode.",
            "Please replace my old address with {street}.",
            "My address has a typo in the street name, can you correct it?",
            "I'd like to add a work address for deliveries.",
            "Where in settings do I change my home address?",
            "We moved to {city}, please update the account.",
            "Can you change the billing address linked to my card?",
            "Update address to {street} {city} thanks",
            "The delivery address still shows my old place.",
            "I've just moved and all my orders are still going to the old place. Can I put in the new one?",
            "Could you amend the postcode on my profile to {postcode}?",
            "Our house number is wrong on my account, it should be {street}.",
            "How do I set a different default delivery address?",
            "I'd like my billing address changed to {street}, it needs to match what my bank has on file.",
            "We've left {city} and need everything delivered to the new house from now on.",
            "Please remove my old address from my account and add my new one.",
            "The flat number is missing from my address and couriers can't find me.",
            "Moving in with my girlfriend next week, how do I swap my delivery address over?",
            "Can you update the invoice address for my membership? It's still showing my parents' house.",
            "I need to change the address on my profile but the edit option is greyed out.",
            "kindly update my residential address, i have relocated",
        ],
        test=[
            "I've just relocated and need my account to show {street}, {city} from now on.",
            "How can I amend my postal details? I changed flats.",
            "Could you swap my default shipping address for my parents' house?",
            "my adress is out of date, how to edit",
            "Can I update my address for order {order} before it ships?",
            "Please correct the house number on my profile, it should be 14 not 41.",
            "I need invoices to go to my new office address in {city}.",
        ],
        pool_details=[
            "The new postcode is {postcode}.",
            "I've lived at the new place since {date}.",
            "The old address is no longer mine.",
            "Please keep the phone number as it is.",
        ],
        test_details=[
            "Postcode is {postcode}.",
            "I don't want anything to go to the old place.",
            "I tried in the app but it gave an error.",
        ],
    ),
    Intent(
        "billing_double_charge",
        "The customer was charged twice, or more than once, for the same order or membership.",
        teacher=[
            "I was charged twice for order {order}.",
            "My bank shows two identical payments of {amount} to Brightcart.",
            "You took the money twice for the same purchase.",
            "There's a duplicate charge on my statement.",
            "My membership fee was billed two times this month.",
        ],
        pool=[
            "double charged for {order}!!",
            "I see {amount} taken twice on {date}, I only placed one order.",
            "Why did you charge my card two times for one delivery?",
            "There are two pending transactions for the same basket.",
            "The payment failed so I tried again, and now both went through.",
            "Plus membership came out of my account twice this month.",
            "Looks like I paid for the same order twice, please check.",
            "My statement has the same Brightcart amount listed twice.",
            "I got billed two times for one item, please sort it out.",
            "Two charges of {amount} but only one order confirmation.",
            "You've charged me three times for a single order.",
            "The app took payment twice when I pressed the button.",
            "I've been billed for the same purchase twice, please look into it.",
            "Checked my online banking and you've taken the payment for order {order} twice over.",
            "Think there's been a glitch: two identical debits from you on the same day for one shop.",
            "I was overcharged, the same transaction appears twice on my card ending {last4}.",
            "My membership shows up twice on my credit card bill this month, and I only have one account.",
            "charged 2x for one order wtf",
            "There appears to be a duplicated payment against my account for the same invoice; "
            "please reverse one of them.",
            "Same amount, same time, same order, charged twice. Not impressed.",
            "Why are there two debits of {amount} when my basket only came to that once?",
        ],
        test=[
            "My card was debited a second time for an order I only paid once.",
            "Why is there an identical transaction of {amount} on my bank app right after the first?",
            "I was billed again for order {order} even though it was already paid.",
            "charged me 2x for the same thing",
            "The subscription fee went out of my account on {date} and again the next day.",
            "Please reverse the duplicate payment, I only bought one.",
            "I noticed you took the same payment two times from my credit card.",
        ],
        pool_details=[
            "I've attached a screenshot of my bank statement.",
            "Please give me back the extra charge.",
            "My bank says it's not their error.",
            "This has left my account overdrawn.",
        ],
        test_details=[
            "I'd like the extra one returned to my card.",
            "My bank told me to contact you directly.",
            "I only received one confirmation email.",
        ],
    ),
    Intent(
        "app_crash",
        "The Brightcart mobile app crashes, freezes or will not open.",
        teacher=[
            "The app keeps crashing when I open it.",
            "Brightcart closes itself every time I go to checkout.",
            "Since the last update the app freezes on the home screen.",
            "The app won't load on my {device}.",
            "The app shuts down as soon as I search for something.",
        ],
        pool=[
            "app crashing constantly",
            "Version {version} crashes right after the splash screen.",
            "I can't use the app, it just shows a white screen and closes.",
            "The app freezes whenever I try to add something to my basket.",
            "Every time I tap on my orders the whole app quits.",
            "Reinstalled the app twice and it still crashes on my {device}.",
            "The app stopped working after I updated my phone.",
            "It hangs on the loading spinner forever.",
            "The app crashes when I try to pay with my card.",
            "Your app is unusable, it keeps force closing.",
            "Scanning a barcode makes the app crash.",
            "The app just quits when I open notifications.",
            "The app locks up on the sign-in screen and I have to force quit it.",
            "The app opens and then immediately closes on my {device}, every single time.",
            "App goes completely unresponsive when I scroll through the offers.",
            "I'm getting a 'Brightcart has stopped' message over and over.",
            "The application crashes whenever I attempt to view my order history.",
            "Your app won't even start, I just get a black screen for a second and then nothing.",
            "it freezes then kicks me out, cant do anything",
            "Cleared the cache and restarted the phone but the app still falls over.",
            "The app seizes up whenever I switch to dark mode.",
            "Is there a known problem with the app on {device}? It keeps bombing out.",
        ],
        test=[
            "The Brightcart app dies every time I scroll the product list.",
            "On my {device} the application becomes unresponsive and then exits.",
            "After installing {version} I can't get past the login screen, it closes.",
            "app just goes black and kicks me out",
            "Whenever I open the basket the app stops responding.",
            "It keeps throwing me back to my phone's home screen mid-order.",
            "The app hangs and then closes when I try to view my receipts.",
        ],
        pool_details=[
            "I'm on the {device}.",
            "I've cleared the cache and restarted the phone.",
            "It worked fine last week.",
            "The app version is {version}.",
        ],
        test_details=[
            "My phone is a {device} on the latest system update.",
            "Deleting and reinstalling didn't help.",
            "The website works fine, it's only the app.",
        ],
    ),
    Intent(
        "upgrade_plan",
        "The customer wants to move to a higher membership tier or asks what an upgrade includes.",
        teacher=[
            "How do I upgrade from Basic to Plus?",
            "I want to switch to the Family plan.",
            "What do I get if I upgrade my membership?",
            "Can I move to the yearly Plus plan instead of monthly?",
            "I'd like more free deliveries, which plan should I upgrade to?",
        ],
        pool=[
            "upgrade me to {plan2} please",
            "I'm on {plan} and want the next tier up.",
            "How much more is it to go from {plan} to {plan2}?",
            "Can I add my partner by upgrading to the Family membership?",
            "Is there a way to upgrade mid-month and only pay the difference?",
            "I'd like to change to the annual plan to save money.",
            "Which membership includes free express delivery? I want that one.",
            "Please move my account to {plan2} starting today.",
            "I tried to upgrade in the app but the button is greyed out.",
            "What's the difference between Plus and Family? Thinking of upgrading.",
            "Want to go premium, how?",
            "Can I upgrade my plan and keep my current renewal date?",
            "I'm thinking about moving up from {plan} to {plan2}, what extra would I actually get?",
            "Could I bump my membership up to the yearly plan?",
            "What are the benefits of the top tier compared to what I'm paying now?",
            "I'd like to go up a level on my membership, how does that work?",
            "My trial has been great and I want to jump straight to {plan2}.",
            "Is it worth switching to {plan2}? I order groceries most weeks.",
            "We've got kids now so I want the membership that covers the whole household.",
            "If I upgrade today, will I be charged the full price or a prorated amount?",
            "Kindly upgrade my account to the premium membership tier.",
            "I want the plan with unlimited free delivery instead of the one I've got.",
            "I can't see how to get onto the higher membership in the app, where is it?",
            "plus plan upgrade how much",
        ],
        test=[
            "I'd like to step up to the {plan2} tier; how does billing work if I switch now?",
            "Does upgrading give me free returns as well as free delivery?",
            "please switch me to the bigger plan",
            "My household grew, so we need the plan that covers more people.",
            "Can you tell me what extra benefits the higher membership has before I switch?",
            "I want to change from monthly to yearly billing on my membership.",
            "Is there a discount if I move up from {plan} to {plan2} today?",
        ],
        pool_details=[
            "I order groceries every week.",
            "My current plan renews on {date}.",
            "I'm happy to pay {amount} a month.",
            "My account email is {email}.",
        ],
        test_details=[
            "I've been on my current plan for {years} years.",
            "We'd mostly use it for weekly shopping.",
            "Please let me know the price difference.",
        ],
    ),
    Intent(
        "account_locked",
        "The customer is locked out or their account has been suspended or blocked from signing in.",
        teacher=[
            "My account has been locked, how do I get back in?",
            "It says my account is suspended and I don't know why.",
            "I entered the wrong password too many times and now I'm blocked.",
            "I can't sign in, it says access to this account is restricted.",
            "Please unlock my account {email}.",
        ],
        pool=[
            "account locked help",
            "I got a message that my account was temporarily disabled for security reasons.",
            "After several failed logins the site locked me out.",
            "Why has my account been frozen? I haven't done anything wrong.",
            "I can't log in, it says 'account blocked, contact support'.",
            "My account is locked and the unlock email never came.",
            "You suspended my account after I disputed a payment, please restore it.",
            "The login page says my profile is deactivated.",
            "I'm locked out after trying my old password a few times.",
            "Can you reactivate my account? It was blocked overnight.",
            "The security check locked my account when I logged in from abroad.",
            "unlock my account pls, im locked out",
            "My account's been suspended without any explanation, can someone look into it?",
            "I keep getting told my account is blocked whenever I try to sign in.",
            "I typed my password wrong a few times and now it won't let me in at all, even with the right one.",
            "Kindly lift the restriction on my account {email}; I believe it was flagged in error.",
            "Logged in on a new phone and your system locked my account, now I'm stuck.",
            "It says I need to wait 24 hours before trying to sign in again. Can you unblock it sooner?",
            "My account was disabled right after I changed my email address. Can you reinstate it?",
            "Why can't I access my account? It keeps saying it's been locked for my protection.",
            "The verification code kept failing and now the account is locked.",
            "I've been barred from logging in and have no idea what I did.",
            "acct suspended?? i need to get back in to check my order",
        ],
        test=[
            "Access to my Brightcart profile has been restricted and I can't place orders.",
            "After a couple of wrong attempts I'm shut out of my account completely.",
            "My login is blocked with a message about unusual activity.",
            "why is my acount suspended??",
            "I need my account reinstated, it was frozen on {date}.",
            "The system keeps telling me my account is on hold and won't let me sign in.",
            "Please lift the lock on my account, I've verified my identity already.",
        ],
        pool_details=[
            "My username is {email}.",
            "I have an order in progress I need to check.",
            "I can verify my identity if you need.",
            "This happened on {date}.",
        ],
        test_details=[
            "I know my password, it's the account itself that is blocked.",
            "I can send ID if needed.",
            "It happened right after I logged in from my {device}.",
        ],
    ),
    Intent(
        "invoice_copy",
        "The customer needs an invoice, receipt or VAT document for an order or membership.",
        teacher=[
            "Can you send me an invoice for order {order}?",
            "I need a receipt for my company's expenses.",
            "Where can I download the VAT invoice?",
            "Please email me a copy of the bill for my last order.",
            "I lost the receipt for my membership payment, can I get another?",
        ],
        pool=[
            "invoice for {order} please",
            "I need a proper VAT invoice with my company name on it.",
            "Can I get receipts for all my orders from {date}?",
            "How do I download a PDF invoice from the app?",
            "Please resend the receipt, I deleted the email.",
            "My accountant needs invoices for my Plus membership payments.",
            "The invoice shows the wrong name, can you issue a new one?",
            "Where do I find the bill for order {order} in my account?",
            "I need a copy of the invoice to return an item to the manufacturer.",
            "Can you add my VAT number to the invoice?",
            "Can I have an itemised receipt for {amount}?",
            "need a receipt for work",
            "I'm self-employed and need receipts for everything I've bought this year.",
            "Where would I find proof of purchase for order {order}? I need it for a warranty claim.",
            "My employer reimburses me but only against an official invoice, can you send one to {email}?",
            "Please issue a copy of the receipt for my annual membership fee.",
            "Could you reissue the invoice with my business address instead of my home one?",
            "I need paperwork showing the {amount} I spent, for an insurance claim.",
            "receipt pls for the tv i bought",
            "Our finance team needs a copy of the bill for order {order} sent over as a PDF.",
        ],
        test=[
            "Could you provide a tax invoice for the purchase I made on {date}?",
            "I require documentation of payment for order {order} for reimbursement at work.",
            "The receipt email never came, can you send it again?",
            "where do i get my invoices",
            "Please issue an invoice addressed to my business for last month's orders.",
            "I need a printed copy of my bill for the warranty claim.",
            "Is it possible to get a yearly statement of all my membership charges?",
        ],
        pool_details=[
            "The company name is {company}.",
            "Please send it to {email}.",
            "It's for my tax return.",
            "A PDF is fine.",
        ],
        test_details=[
            "It needs to show the VAT amount separately.",
            "My finance team needs it by Friday.",
            "The business is called {company}.",
        ],
    ),
    Intent(
        "cancel_order",
        "The customer wants to cancel an order that has not been delivered yet.",
        teacher=[
            "Please cancel order {order}, I ordered by mistake.",
            "Can I still cancel my order? It hasn't shipped yet.",
            "I changed my mind, please don't send my order.",
            "How do I cancel an order I placed on {date}?",
            "I'd like to cancel the order I just made.",
        ],
        pool=[
            "cancel order {order}",
            "I accidentally ordered two of the same thing, cancel one please.",
            "Is it too late to cancel? I only ordered an hour ago.",
            "Please stop order {order} before it goes out.",
            "I found it cheaper elsewhere, can you cancel my order?",
            "I don't need the items anymore, please cancel the delivery.",
            "There's no cancel button on my order page, how do I cancel?",
            "Cancel my grocery order for tomorrow please.",
            "I placed the order with the wrong size, cancel it and I'll reorder.",
            "Please cancel the whole order, not just one item.",
            "I want to call off my order from {date}.",
            "Can you cancel it? I'm not going to be home for the delivery anyway.",
            "I placed an order by accident while browsing, please don't process it.",
            "Could you scrap order {order}? I no longer need it.",
            "Ordered the wrong colour, can I cancel before it's dispatched?",
            "Kindly cancel my recent purchase prior to dispatch.",
            "Changed my mind about the sofa, is it still possible to cancel?",
            "Need to cancel, the delivery date is too late for when I need the stuff.",
            "order went through twice by mistake, cancel the second one",
            "How do I withdraw an order that hasn't been sent out yet?",
            "I'd rather not go ahead with order {order}, please cancel it and release the payment.",
            "Oops, didn't mean to hit buy. Can you undo that?",
        ],
        test=[
            "I'd like to withdraw order {order} before you dispatch it.",
            "Please void the purchase I made this morning, it was a mistake.",
            "can u cancel my last order",
            "I no longer want what I bought on {date}; it hasn't left the warehouse yet, please stop it.",
            "Is there any way to scrap an order that's still processing?",
            "My child placed an order on my account, please cancel it.",
            "I'd like to cancel order {order} and not be charged.",
        ],
        pool_details=[
            "It was {amount} in total.",
            "The order confirmation came a few minutes ago.",
            "I paid with my Brightcart card.",
            "Please confirm once it's cancelled.",
        ],
        test_details=[
            "It still says 'processing' in the app.",
            "Please confirm I won't be charged.",
            "The total was {amount}.",
        ],
    ),
]

GREETINGS = [
    "Hi,",
    "Hello,",
    "Hello there,",
    "Hey,",
    "Good morning,",
    "Good evening,",
    "Dear Brightcart support,",
    "Hi team,",
    "To whom it may concern,",
    "Hi {name} here.",
    "hi",
    "hello",
]
SIGN_OFFS = [
    "Thanks.",
    "Thank you!",
    "Thanks in advance.",
    "Many thanks, {name}",
    "Regards, {name}",
    "Kind regards,\n{name}",
    "Cheers",
    "thx",
    "Please help asap.",
    "Appreciate your help.",
    "Best, {name}",
]
PREAMBLES = [
    "I've been shopping with you for years.",
    "Sorry to bother you again.",
    "I tried the help centre first but couldn't find an answer.",
    "I'm writing from my partner's phone.",
    "This is my second message about this.",
    "Quick question.",
    "I hope you can help me with something.",
    "I spoke to someone on the phone earlier but got cut off.",
]
SENTIMENTS = [
    "Honestly this is really frustrating.",
    "I'm quite disappointed, to be honest.",
    "Otherwise I love your service!",
    "Not impressed at all.",
    "No rush, whenever you get a chance.",
    "This is urgent.",
    "I'd really appreciate a quick reply.",
    "You've always been great so I'm sure it's a small thing.",
]
CHAT_OPENERS = ["hi", "hey", "hello", "hi there", "um", "quick one:", "help!", "ok so"]
SUBJECTS = ["Help needed", "Question", "Urgent", "Order {order}", "My account", "Support request", "Problem"]
NAMES = [
    "Maya",
    "Tomasz",
    "Priya",
    "Jonas",
    "Aisha",
    "Lucas",
    "Chen",
    "Fatima",
    "Olu",
    "Ines",
    "Rafael",
    "Sofia",
    "Noah",
    "Keiko",
    "Dmitri",
    "Zara",
]
STREETS = ["12 Alder Lane", "4 Harbour Row", "77 Mill Street", "9 Quarry Close", "210 Elm Avenue", "3B Orchard Way"]
CITIES = ["Northfield", "Easton", "Kingsbridge", "Larkhill", "Westmere", "Port Avery"]
DEVICES = ["iPhone 13", "iPhone 15", "Pixel 7", "Galaxy S22", "iPad", "Moto G"]
PLANS = ["Basic", "Plus", "Family"]
COMPANIES = ["Greenleaf Design Ltd", "Hollow Oak Studio", "Marlow & Finch", "Bytefield Consulting"]
DATES = ["Monday", "Tuesday", "Friday", "12 March", "the 4th", "3 June", "the 21st", "2 October"]
SHORTHAND = {"please": "pls", "you": "u", "thanks": "thx", "because": "cos", "are": "r", "your": "ur"}


def fill(template: str, rng: random.Random) -> str:
    """Fill a template's slots with plausible, invented values."""
    plan_index = rng.randrange(len(PLANS) - 1)
    values = {
        "order": f"#BC-{rng.randrange(100000, 999999)}",
        "amount": f"${rng.randrange(5, 400)}.{rng.randrange(100):02d}",
        "date": rng.choice(DATES),
        "name": rng.choice(NAMES),
        "last4": f"{rng.randrange(10000):04d}",
        "plan": PLANS[plan_index],
        "plan2": PLANS[plan_index + 1],
        "device": rng.choice(DEVICES),
        "version": f"{rng.randrange(3, 6)}.{rng.randrange(10)}.{rng.randrange(10)}",
        "street": rng.choice(STREETS),
        "city": rng.choice(CITIES),
        "postcode": f"{rng.choice('NESW')}{rng.randrange(1, 20)} {rng.randrange(10)}{rng.choice('ABDHJ')}X",
        "email": f"{rng.choice(NAMES).lower()}.{rng.randrange(10, 99)}@example.com",
        "days": str(rng.randrange(4, 25)),
        "years": str(rng.randrange(2, 9)),
        "company": rng.choice(COMPANIES),
    }
    return template.format(**values)


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    """Chat-style noise: shorthand, swapped or dropped letters."""
    words = text.split(" ")
    for index, word in enumerate(words):
        if rng.random() >= rate:
            continue
        lowered = word.lower()
        if lowered in SHORTHAND:
            words[index] = SHORTHAND[lowered]
        elif len(word) > 4 and word.isalpha():
            at = rng.randrange(1, len(word) - 2)
            if rng.random() < 0.5:
                words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
            else:
                words[index] = word[:at] + word[at + 1 :]
    return " ".join(words)


def compose(core: str, details: list[str], rng: random.Random) -> str:
    """One ticket around a core phrasing: channel, greeting, context, detail, tone, sign-off."""
    style = rng.choices(["chat", "short", "email", "long"], weights=[3, 1, 4, 2])[0]
    if style in ("chat", "short"):
        text = fill(core, rng)
        if style == "chat" and rng.random() < 0.5:
            text = text.lower().rstrip(".!")
        if rng.random() < 0.4:
            text += " " + fill(rng.choice(details), rng)
        if style == "chat" and rng.random() < 0.5:
            text = rng.choice(CHAT_OPENERS) + " " + text
        return add_typos(text, rng, rate=0.12 if style == "chat" else 0.04)
    parts = []
    if rng.random() < 0.8:
        parts.append(fill(rng.choice(GREETINGS), rng))
    if style == "long" or rng.random() < 0.3:
        parts.append(rng.choice(PREAMBLES))
    parts.append(fill(core, rng))
    for detail in rng.sample(details, k=2 if style == "long" else rng.randrange(0, 2)):
        parts.append(fill(detail, rng))
    if style == "long" or rng.random() < 0.35:
        parts.append(rng.choice(SENTIMENTS))
    if rng.random() < 0.7:
        parts.append(fill(rng.choice(SIGN_OFFS), rng))
    separator = "\n" if rng.random() < 0.3 else " "
    text = separator.join(parts)
    if style == "email" and rng.random() < 0.3:
        text = f"Subject: {fill(rng.choice(SUBJECTS), rng)}\n\n{text}"
    return add_typos(text, rng, rate=0.02)


def teacher_examples(rng: random.Random) -> list[dict]:
    rows = []
    for intent in INTENTS:
        # the teacher's examples are clean, hand-written ones: each core once as written,
        # the extra ones as a chat message (a core without slots would repeat verbatim)
        texts = [fill(core, rng) for core in intent.teacher]
        while len(texts) < TEACHER_PER_INTENT:
            text = f"{rng.choice(CHAT_OPENERS)} {fill(rng.choice(intent.teacher), rng).lower()}"
            if text not in texts:
                texts.append(text)
        rows += [{"text": text, "label": intent.name} for text in texts]
    return rows


def test_examples(rng: random.Random) -> list[dict]:
    rows = []
    for intent in INTENTS:
        for index in range(TEST_PER_INTENT):
            core = intent.test[index % len(intent.test)]
            rows.append({"text": compose(core, intent.test_details, rng), "label": intent.name})
    rng.shuffle(rows)
    return rows


def near_duplicate(text: str, rng: random.Random) -> str:
    """The same ticket sent again with a trivial change (a resend, a tweak, a signature)."""
    edits = [
        lambda t: t + "!",
        lambda t: t.rstrip(".!?") + "??",
        lambda t: "Resending: " + t,
        lambda t: t + " Thanks again.",
        lambda t: t.replace(",", "", 1),
        lambda t: t.lower(),
        lambda t: t + "\n\nSent from my phone",
    ]
    changed = rng.choice(edits)(text)
    return changed if changed != text else text + " ."


def pool_tickets(rng: random.Random) -> list[dict]:
    # realistic imbalance: deliveries and refunds dominate a shop's inbox
    weights = [0.7, 1.4, 1.6, 1.0, 0.9, 0.7, 0.8, 1.0, 0.6, 0.8, 0.7, 1.0]
    base_count = POOL_SIZE - EXACT_DUPLICATES - NEAR_DUPLICATES - len(JUNK)
    chosen = rng.choices(INTENTS, weights=weights, k=base_count)
    texts = [compose(rng.choice(intent.pool), intent.pool_details, rng) for intent in chosen]
    texts += [near_duplicate(rng.choice(texts), rng) for _ in range(NEAR_DUPLICATES)]
    texts += [rng.choice(texts) for _ in range(EXACT_DUPLICATES)]
    texts += JUNK
    rng.shuffle(texts)
    return [{"ticket_id": f"T{index + 1:05d}", "text": text} for index, text in enumerate(texts)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # one generator per file, so editing one file's templates leaves the others unchanged
    intents = {
        "product": "Brightcart, a fictional online shop",
        "intents": [{"name": intent.name, "description": intent.description} for intent in INTENTS],
    }
    (args.out / "intents.json").write_text(json.dumps(intents, indent=2) + "\n", encoding="utf-8")
    outputs = {
        "teacher_train.jsonl": teacher_examples(random.Random(args.seed)),
        "tickets.jsonl": pool_tickets(random.Random(args.seed + 1)),
        "test.jsonl": test_examples(random.Random(args.seed + 2)),
    }
    for filename, rows in outputs.items():
        write_jsonl(args.out / filename, rows)
        print(f"{args.out / filename}: {len(rows)} rows")


if __name__ == "__main__":
    main()
